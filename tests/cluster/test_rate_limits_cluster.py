"""Rate limits on a real Redis Cluster: one admit checks a key's and its account's limits in
one script (their keys share the account's hash tag), and lease renewals go out as one
pipeline split by node."""

from __future__ import annotations

import redis.asyncio as redis
from redis.crc import key_slot

from switchboard_core.rate_limits import RateLimiter, RateLimits

CLOCK = [1_800_000_000_000_000]  # microseconds: the tests drive time


async def test_admit_charges_the_key_and_its_account_together_or_not_at_all(
    cluster: redis.Redis, prefix: str
) -> None:
    limiter = RateLimiter(cluster, prefix, clock=lambda: CLOCK[0])
    key_limits = RateLimits(requests_per_minute=3, tokens_per_minute=1000, max_concurrent=2)
    account_limits = RateLimits(requests_per_minute=100, max_concurrent=2)
    limits = limiter.caller_limits("k1", "acct-rl", key_limits, account_limits, tokens=10)
    other = limiter.caller_limits("k2", "acct-rl", RateLimits(), account_limits, tokens=10)
    assert len({key_slot(limit.key.encode()) for limit in limits}) == 1

    assert await limiter.acquire(limits, "lease-1", 30) is None
    assert await limiter.acquire(limits, "lease-2", 30) is None
    full = await limiter.acquire(limits, "lease-3", 30)
    assert full is not None and full.limit.name == "key.max_concurrent"
    # The account's concurrency is full too now: another key of it is refused, and the
    # refused request above charged nothing (the key's rpm still admits one more).
    refused = await limiter.acquire(other, "lease-4", 30)
    assert refused is not None and refused.limit.name == "account.max_concurrent"

    CLOCK[0] += 1_000_000  # a second later: each set pushes lease-1's expiry
    assert await limiter.renew({"lease-1": [lm.key for lm in limits if lm.kind == "c"]}, 30) == 2
    await limiter.finish("lease-1", limits, real_tokens=5)
    assert await limiter.acquire(limits, "lease-5", 30) is None  # the third request a minute
    await limiter.finish("lease-5", limits)
    rate = await limiter.acquire(limits, "lease-6", 30)
    assert rate is not None and rate.limit.name == "key.requests_per_minute"
    assert rate.retry_after is not None and 0 < rate.retry_after <= 20
    endpoint = limiter.endpoint_limits("ep-1", max_concurrent=1, requests_per_minute=10)
    assert await limiter.acquire(endpoint, "lease-7", 30) is None
    assert await limiter.acquire(endpoint, "lease-8", 30) is not None
