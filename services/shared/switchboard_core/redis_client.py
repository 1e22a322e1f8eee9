"""Redis access through ``redis.asyncio`` (the maintained successor of aioredis)."""

from __future__ import annotations

import redis.asyncio as redis


def create_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=5,
        health_check_interval=30,
        max_connections=256,
    )
