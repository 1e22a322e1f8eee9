"""Rate limits of keys and accounts against the real Redis (switchboard_core.rate_limits,
switchboard_router.traffic): GCRA admits exactly a minute's worth then one per interval; two
routers share a limit; an account's limit binds all its keys; a refusal charges nothing;
tokens are corrected to the real usage; concurrency leases are released, expire when their
holder dies and live on while it renews them; a Redis that is silent lets requests through
within the deadline (fail open), counted and logged once.

Most tests pass a clock (``RateLimiter(clock=...)``) to drive time exactly; the two-router
test uses Redis's own TIME, as the routers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis

from switchboard_core.rate_limits import (
    NO_RATE_LIMITS,
    Limit,
    RateLimited,
    RateLimiter,
    RateLimits,
    increment_us,
)
from switchboard_core.redis_client import RedisDeadline, create_redis
from switchboard_router import metrics
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, Message, Role, UsageReport
from switchboard_router.leases import LeaseKeeper
from switchboard_router.traffic import BUSY_RETRY_SECONDS, TrafficControl
from switchboard_router.usage_estimate import reservation_prompt_tokens
from tests.faults.links import redis_proxy, through
from tests.faults.proxy import FaultProxy

REQUEST = CompletionRequest(model="m", messages=(Message.of(Role.USER, "hi"),), max_tokens=10)
LEASE = 30.0


class Clock:
    """Microseconds since the epoch, moved by the test."""

    def __init__(self) -> None:
        self.us = int(time.time() * 1_000_000)

    def __call__(self) -> int:
        return self.us

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1_000_000)


@pytest.fixture
def prefix(redis_prefix: str, redis_client: redis.Redis) -> str:
    """A fresh prefix per test (``redis_client`` deletes the session's keys afterwards)."""
    return f"{redis_prefix}rl{uuid.uuid4().hex[:6]}:"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def control(client: redis.Redis, prefix: str, clock: Clock | None = None) -> TrafficControl:
    limiter = RateLimiter(client, prefix, clock=clock)
    # Generous: these tests count admissions, and a check past its deadline fails open (the
    # tests below the "fail open" line set their own). A CI machine starved of CPU once
    # stretched a burst of 200 past 0.5 s and admitted 67 of 60.
    deadline = RedisDeadline(5.0)
    return TrafficControl(limiter, LeaseKeeper(limiter, deadline, LEASE), deadline)


def caller(
    key: str = "key_a", account: str = "acct", *, own: RateLimits = NO_RATE_LIMITS, **shared: int
) -> Caller:
    return Caller(key, account, rate_limits=own, account_rate_limits=RateLimits(**shared))


async def admitted(traffic: TrafficControl, who: Caller, times: int) -> int:
    """How many of ``times`` requests (one after another) were admitted."""
    count = 0
    for _ in range(times):
        try:
            await traffic.admit(who, REQUEST)
            count += 1
        except RateLimited:
            pass
    return count


async def refusal(traffic: TrafficControl, who: Caller) -> RateLimited:
    with pytest.raises(RateLimited) as refused:
        await traffic.admit(who, REQUEST)
    return refused.value


# --- GCRA ---------------------------------------------------------------------------------


async def test_gcra_admits_exactly_the_burst_then_one_per_interval(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    traffic = control(redis_client, prefix, clock)
    who = caller(own=RateLimits(requests_per_minute=60))
    assert await admitted(traffic, who, 60) == 60  # a minute's worth at once
    refused = await refusal(traffic, who)
    assert refused.retry_after_seconds == 1.0  # the emission interval, 60/60 s
    assert (refused.reason, refused.metadata) == (
        "RATE_LIMITED",
        {"limit": "key.requests_per_minute", "limit_value": "60"},
    )
    clock.advance(0.999_999)
    assert (await refusal(traffic, who)).retry_after_seconds == pytest.approx(1e-6)
    clock.advance(0.000_001)
    assert await admitted(traffic, who, 2) == 1  # one per interval
    clock.advance(10)
    assert await admitted(traffic, who, 20) == 10
    clock.advance(120)  # idle for long: back to a full burst, no more
    assert await admitted(traffic, who, 70) == 60


async def test_state_is_one_key_per_limit_that_expires_when_idle(
    redis_client: redis.Redis, prefix: str
) -> None:
    traffic = control(redis_client, prefix)  # Redis's clock
    who = caller(own=RateLimits(requests_per_minute=600, tokens_per_minute=10_000))
    await admitted(traffic, who, 3)
    keys = sorted([k.decode() async for k in redis_client.scan_iter(match=prefix + "*")])
    assert keys == [f"{prefix}rl:{{acct}}:key:key_a:rpm", f"{prefix}rl:{{acct}}:key:key_a:tpm"]
    # 3 requests of 600 a minute put TAT 0.3 s ahead: the key lives that long, no more.
    ttl = await redis_client.pttl(keys[0])
    assert 0 < ttl <= 300


async def test_two_routers_share_a_limit_and_other_keys_are_unaffected(
    redis_url: str, prefix: str
) -> None:
    """A burst of 200 on a 60 rpm key through two routers admits 60, plus at most one for
    each second or part of one the burst lasted (GCRA on Redis's clock lets one more in each
    second: the documented tolerance; the burst takes well under a second here)."""
    clients = [create_redis(redis_url), create_redis(redis_url)]
    routers = [control(client, prefix) for client in clients]
    who = caller(own=RateLimits(requests_per_minute=60))

    async def one(traffic: TrafficControl) -> bool:
        try:
            await traffic.admit(who, REQUEST)
        except RateLimited:
            return False
        return True

    started = time.monotonic()
    results = await asyncio.gather(*(one(routers[i % 2]) for i in range(200)))
    elapsed = time.monotonic() - started
    assert 60 <= sum(results) <= 60 + int(elapsed) + 1
    other = caller("key_b", own=RateLimits(requests_per_minute=60))
    assert await admitted(routers[1], other, 60) == 60
    for client in clients:
        await client.aclose()


async def test_an_account_limit_binds_all_its_keys(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    traffic = control(redis_client, prefix, clock)
    first, second = caller("key_a", requests_per_minute=10), caller("key_b", requests_per_minute=10)
    assert await admitted(traffic, first, 6) == 6
    assert await admitted(traffic, second, 6) == 4
    refused = await refusal(traffic, second)
    assert refused.metadata["limit"] == "account.requests_per_minute"
    assert refused.retry_after_seconds == 6.0
    # Another account's keys are not bound by it.
    assert await admitted(traffic, caller("key_c", "other", requests_per_minute=10), 10) == 10


async def test_a_refusal_charges_nothing(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    """The key's rpm admits, the account's concurrency refuses: the key's rpm is not
    charged (all or nothing in one script)."""
    traffic = control(redis_client, prefix, clock)
    who = caller(own=RateLimits(requests_per_minute=2), max_concurrent=1)
    holding = await traffic.admit(who, REQUEST)
    assert holding is not None
    for _ in range(5):
        refused = await refusal(traffic, who)
        assert refused.metadata["limit"] == "account.max_concurrent"
        assert refused.retry_after_seconds == BUSY_RETRY_SECONDS
    holding.finish(None)
    await traffic.drain()
    second = await traffic.admit(who, REQUEST)  # the 2nd charge of the key's 2 per minute
    assert second is not None
    second.finish(None)
    await traffic.drain()
    refused = await refusal(traffic, who)
    assert refused.metadata["limit"] == "key.requests_per_minute"
    assert refused.retry_after_seconds == 30.0  # the 3rd is due one interval after the 2nd


async def test_the_refusal_names_the_limit_that_waits_longest(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    limiter = RateLimiter(redis_client, prefix, clock=clock)
    account = RateLimits(requests_per_minute=2)
    a = limiter.caller_limits("key_a", "acct", RateLimits(requests_per_minute=1), account, 0)
    b = limiter.caller_limits("key_b", "acct", NO_RATE_LIMITS, account, 0)
    assert await limiter.acquire(a) is None
    assert await limiter.acquire(b) is None  # the account's 2 a minute are used
    found = await limiter.acquire(b)
    assert found is not None
    assert (found.limit.name, found.retry_after) == ("account.requests_per_minute", 30.0)
    found = await limiter.acquire(a)  # both refuse: the key's in 60 s, the account's in 30 s
    assert found is not None
    assert (found.limit.name, found.retry_after) == ("key.requests_per_minute", 60.0)


# --- tokens per minute -------------------------------------------------------------------


async def test_tokens_are_charged_by_estimate_and_corrected_to_real_usage(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    traffic = control(redis_client, prefix, clock)
    estimate = reservation_prompt_tokens(REQUEST)  # 18 bytes with framing: 6 tokens
    assert estimate == 6
    who = caller(own=RateLimits(tokens_per_minute=60))
    tickets = [await traffic.admit(who, REQUEST) for _ in range(10)]  # 60 tokens: the burst
    refused = await refusal(traffic, who)
    assert (refused.metadata["limit"], refused.retry_after_seconds) == (
        "key.tokens_per_minute",
        6.0,  # 6 tokens at a token a second
    )
    # Each used 2 tokens, not 6: 40 come back, so 6 more requests fit (36 of the 40).
    for ticket in tickets:
        assert ticket is not None
        ticket.finish(UsageReport(prompt_tokens=1, completion_tokens=1))
    await traffic.drain()
    assert await admitted(traffic, who, 10) == 6


async def test_a_correction_above_the_estimate_is_charged_and_a_refund_stops_at_now(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    limiter = RateLimiter(redis_client, prefix, clock=clock)
    limits = limiter.caller_limits(
        "key_a", "acct", RateLimits(tokens_per_minute=1000), RateLimits(), 600
    )
    (tpm,) = limits
    assert await limiter.acquire(limits) is None
    found = await limiter.acquire(limits)
    assert found is not None
    assert found.retry_after == pytest.approx(12.0)  # 200 tokens over, at 1000 a minute
    await limiter.finish("", limits, 100)  # 500 come back: 600 more fit now
    assert await limiter.acquire(limits) is None
    # 700 charged; the second used 1,900: 1,300 more, TAT 2,000 tokens ahead (a minute over).
    await limiter.finish("", limits, 1900)
    tat = int(await redis_client.get(tpm.key) or 0)
    assert tat == clock() + increment_us(2000, 1000)
    # A refund larger than what is ahead stops at now: a full minute's worth, no more.
    await limiter.finish("", [Limit(tpm.name, tpm.key, 1000, cost=5000)], 0)
    assert await redis_client.exists(tpm.key) == 0
    assert await limiter.acquire([Limit(tpm.name, tpm.key, 1000, cost=1000)]) is None
    assert await limiter.acquire([Limit(tpm.name, tpm.key, 1000, cost=1)]) is not None


async def test_a_request_larger_than_a_minutes_tokens_is_refused_for_good_without_redis(
    prefix: str,
) -> None:
    client = create_redis("redis://127.0.0.1:1/0")  # nothing listens: no call may be made
    traffic = control(client, prefix)
    who = caller(tokens_per_minute=5)
    refused = await refusal(traffic, who)
    assert refused.retry_after_seconds is None  # no RetryInfo: waiting cannot help
    assert refused.metadata == {
        "limit": "account.tokens_per_minute",
        "limit_value": "5",
        "requested_tokens": "6",
    }
    assert "can never be admitted" in refused.message
    await client.aclose()


async def test_callers_without_rate_limits_never_ask_redis(prefix: str) -> None:
    client = create_redis("redis://127.0.0.1:1/0")
    before = metrics.RATE_LIMIT_CHECKS.labels("caller", "unavailable")._value.get()
    assert await control(client, prefix).admit(Caller("key_a", "acct"), REQUEST) is None
    assert metrics.RATE_LIMIT_CHECKS.labels("caller", "unavailable")._value.get() == before
    await client.aclose()


# --- concurrency leases ------------------------------------------------------------------


async def test_leases_are_released_when_the_request_ends(
    redis_client: redis.Redis, prefix: str
) -> None:
    traffic = control(redis_client, prefix)
    who = caller(own=RateLimits(max_concurrent=2))
    first, second = await traffic.admit(who, REQUEST), await traffic.admit(who, REQUEST)
    assert first is not None and second is not None
    assert (await refusal(traffic, who)).metadata["limit"] == "key.max_concurrent"
    first.finish(None)
    first.finish(None)  # twice: nothing more
    await traffic.drain()
    third = await traffic.admit(who, REQUEST)
    assert third is not None
    for ticket in (second, third):
        ticket.finish(None)
    await traffic.drain()
    assert await redis_client.zcard(f"{prefix}rl:{{acct}}:key:key_a:conc") == 0


async def test_a_dead_routers_lease_expires_and_a_renewed_one_does_not(
    redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    limiter = RateLimiter(redis_client, prefix, clock=clock)
    deadline = RedisDeadline(0.5)
    alive = LeaseKeeper(limiter, deadline, LEASE)
    living = TrafficControl(limiter, alive, deadline)
    dying = TrafficControl(limiter, LeaseKeeper(limiter, deadline, LEASE), deadline)
    who = caller(max_concurrent=2)
    assert await living.admit(who, REQUEST) is not None
    assert await dying.admit(who, REQUEST) is not None  # its router dies holding it
    assert alive.held == 1
    for _ in range(3):  # renewed every third of the lease: held well past the lease time
        clock.advance(LEASE * 0.9)
        await alive.renew()
    clock.advance(LEASE * 0.2)
    assert await living.admit(who, REQUEST) is not None  # the dead router's slot came free
    assert (await refusal(living, who)).metadata["limit"] == "account.max_concurrent"


async def test_the_renewal_task_keeps_leases_alive_in_real_time(
    redis_client: redis.Redis, prefix: str
) -> None:
    limiter = RateLimiter(redis_client, prefix)
    deadline = RedisDeadline(0.5)
    keeper = LeaseKeeper(limiter, deadline, 0.3)  # renewed every 0.1 s
    traffic = TrafficControl(limiter, keeper, deadline)
    who = caller(own=RateLimits(max_concurrent=1))
    keeper.start()
    assert await traffic.admit(who, REQUEST) is not None
    await asyncio.sleep(0.6)  # twice the lease
    assert (await refusal(traffic, who)).metadata["limit"] == "key.max_concurrent"
    await keeper.stop()  # as if the router died: nobody renews
    await asyncio.sleep(0.35)
    assert await traffic.admit(who, REQUEST) is not None


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    link = redis_proxy(redis_url)
    yield link
    link.stop()


@pytest.fixture
async def proxied(proxy: FaultProxy, redis_url: str) -> AsyncIterator[redis.Redis]:
    client = create_redis(through(proxy, redis_url), timeout=0.3)
    yield client
    await client.aclose()


async def test_a_check_cancelled_after_redis_ran_it_gives_its_lease_back(
    proxy: FaultProxy, redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    proxied = create_redis(through(proxy, redis_url), timeout=2.0)
    limiter = RateLimiter(proxied, prefix)
    deadline = RedisDeadline(2.0)
    traffic = TrafficControl(limiter, LeaseKeeper(limiter, deadline, LEASE), deadline)
    who = caller(own=RateLimits(max_concurrent=1))
    await proxied.ping()  # connected before the link slows down
    proxy.set("latency", latency=0.3)
    task = asyncio.create_task(traffic.admit(who, REQUEST))
    key = f"{prefix}rl:{{acct}}:key:key_a:conc"
    for _ in range(100):  # until Redis ran the script (its answer is on its way)...
        if await redis_client.zcard(key):
            break
        await asyncio.sleep(0.01)
    task.cancel()  # ...when the client goes away
    with pytest.raises(asyncio.CancelledError):
        await task
    proxy.set("pass")
    await traffic.drain()
    assert await redis_client.zcard(key) == 0
    await proxied.aclose()


# --- Redis unreachable: fail open --------------------------------------------------------


async def test_a_silent_redis_admits_within_the_deadline_counted_and_logged_once(
    proxy: FaultProxy,
    proxied: redis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RateLimiter(proxied, prefix)
    deadline = RedisDeadline(0.3)
    traffic = TrafficControl(limiter, LeaseKeeper(limiter, deadline, LEASE), deadline)
    who = caller(own=RateLimits(requests_per_minute=1, max_concurrent=1))
    assert await traffic.admit(who, REQUEST) is not None  # Redis answers: the one allowed
    unavailable = metrics.RATE_LIMIT_CHECKS.labels("caller", "unavailable")
    before = unavailable._value.get()
    proxy.set("blackhole")
    with caplog.at_level(logging.WARNING, logger="switchboard_router.traffic"):
        started = time.monotonic()
        assert await traffic.admit(who, REQUEST) is None  # over the limit, but admitted
        first = time.monotonic() - started
        started = time.monotonic()
        assert await traffic.admit(who, REQUEST) is None  # Redis known down: at once
        second = time.monotonic() - started
    assert first < 0.3 + 0.2
    assert second < 0.05
    assert unavailable._value.get() == before + 2
    warnings = [r for r in caplog.records if "failing open" in r.getMessage()]
    assert len(warnings) == 1
