"""Redis access through ``redis.asyncio`` (the maintained successor of aioredis)."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

# A command that hits a dropped connection (Redis restarted, an idle socket closed) is retried
# twice on a fresh one, 10-50 ms apart; then the caller decides what an outage means (the
# router falls back to metering's RPC or refuses a limited key, metering backs off). Without
# it the first command after a restart fails; with redis-py's default for Redis() (ten
# retries) a request would wait about 3.5 s to learn that Redis is down.
RETRIES = 2


def create_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=5,
        # Longer than any blocking read (the outbox consumer's XREADGROUP blocks 1 s).
        socket_timeout=5,
        health_check_interval=30,
        max_connections=256,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.05, base=0.01), RETRIES),
    )
