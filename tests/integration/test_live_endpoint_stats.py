"""Live endpoint statistics and circuit breakers shared through the real Redis, between two
recorders standing for two routers: figures add up across them, a breaker one opens the other
respects after a refresh, half-open probes are limited across both, a 429's Retry-After cools
the endpoint down everywhere, a blackholed Redis never holds up the request path (counts are
kept and written later), and the public model list shows the figures."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import redis.asyncio as redis

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import account_pb2
from switchboard_core.redis_client import create_redis
from switchboard_router.account import AccountReads
from switchboard_router.breaker import BreakerPolicy, Opening
from switchboard_router.catalog_cache import CatalogCache, Route, Snapshot
from switchboard_router.endpoint_stats import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Figures,
    LiveSettings,
    LiveStats,
)
from switchboard_router.providers.base import (
    UpstreamBadRequest,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard_router.stats_histogram import STEPS_PER_DOUBLING
from tests.faults.links import redis_proxy, through
from tests.faults.proxy import FaultProxy

STEP = 2 ** (1 / STEPS_PER_DOUBLING)
MODEL = "x/live"
OPEN_SECONDS = 5.0


def catalog() -> catalog_pb2.WatchCatalogResponse:
    endpoints = []
    for provider in ("pa", "pb"):
        found = catalog_pb2.Endpoint(
            id=f"{provider}:{MODEL}", model_id=MODEL, provider_id=provider, upstream_model="m"
        )
        found.pricing.CopyFrom(
            common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2")
        )
        endpoints.append(found)
    return catalog_pb2.WatchCatalogResponse(
        version=1,
        providers=[
            catalog_pb2.Provider(
                id=p, api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT, base_url="http://x/v1"
            )
            for p in ("pa", "pb")
        ],
        models=[catalog_pb2.Model(id=MODEL, context_length=8192, endpoints=endpoints)],
    )


ROUTE, OTHER = Snapshot.from_proto(catalog()).routes[MODEL]
EP = ROUTE.endpoint_id


def down(route: Route = ROUTE) -> UpstreamUnavailable:
    return UpstreamUnavailable("503", provider_id=route.provider_id, status=503)


class Clock:
    """Wall time that a test can move on (both routers read the same one)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}live:{uuid.uuid4().hex[:6]}:"


@pytest.fixture
async def client(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[redis.Redis]:
    """The routers' client (``redis_client``, the inspecting one, cleans the keys up)."""
    made = create_redis(redis_url, timeout=0.5)
    yield made
    await made.aclose()


def settings(prefix: str, **breaker: float) -> LiveSettings:
    policy = {
        "window_seconds": 30.0,
        "min_requests": 10,
        "failure_rate": 0.5,
        "consecutive_failures": 3,
        "open_seconds": OPEN_SECONDS,
        "probes": 1,
        "max_cooldown_seconds": 60.0,
        **breaker,
    }
    return LiveSettings(
        prefix=prefix,
        window_seconds=60.0,
        flush_seconds=0.05,
        refresh_seconds=0.05,
        redis_seconds=0.3,
        breaker=BreakerPolicy(**policy),  # type: ignore[arg-type]
        min_samples=3,
    )


def routers(
    client: redis.Redis, prefix: str, clock: Clock, **breaker: float
) -> tuple[LiveStats, LiveStats]:
    return (
        LiveStats(client, settings(prefix, **breaker), clock=clock),
        LiveStats(client, settings(prefix, **breaker), clock=clock),
    )


def figures_of(live: LiveStats, endpoint: str = EP) -> Figures:
    found = live.figures(endpoint)
    assert found is not None
    return found


async def test_two_routers_figures_add_up_through_redis(
    client: redis.Redis, redis_client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    a, b = routers(client, prefix, clock, consecutive_failures=100.0)
    for _ in range(6):
        a.first_token(ROUTE, 0.2)
        a.finished(ROUTE, 100, 2.0)  # 50 tokens/s
    for _ in range(4):
        b.first_token(ROUTE, 0.8)
    b.failed(ROUTE, down(), started=False)
    b.failed(ROUTE, UpstreamRateLimited("429", provider_id="pa", status=429), started=False)
    b.failed(ROUTE, UpstreamTimeout("slow", provider_id="pa"), started=False)
    b.failed(ROUTE, UpstreamBadRequest("400", provider_id="pa", status=400), started=False)
    b.failed(ROUTE, down(), started=True)  # a stream cut after its first token (counted then)
    b.first_token(OTHER, 0.5)
    for live in (a, b):
        assert await live.flush()
    for live in (a, b):
        assert await live.refresh()
    assert figures_of(a) == figures_of(b)
    seen = figures_of(a)
    assert (seen.requests, seen.failures, seen.rate_limited, seen.timeouts) == (14, 4, 1, 1)
    assert seen.window_seconds == 60.0 and seen.uptime == 1 - 4 / 14
    assert seen.ttft is not None and seen.throughput is not None
    assert 0.2 / STEP <= seen.ttft.p50 <= 0.2 * STEP  # 6 of 10 first tokens at 0.2 s
    assert 0.8 / STEP <= seen.ttft.p90 <= 0.8 * STEP
    assert 50 / STEP <= seen.throughput.p50 <= 50 * STEP
    assert figures_of(a, OTHER.endpoint_id).requests == 1
    assert figures_of(a, OTHER.endpoint_id).ttft is None  # one sample: too few to show
    # The layout: per endpoint and bucket, hash-tagged by endpoint, expiring.
    keys = [k.decode() async for k in redis_client.scan_iter(match=f"{prefix}stats:{{*")]
    assert {k.rsplit(":", 1)[0] for k in keys} == {
        f"{prefix}stats:{{{EP}}}",
        f"{prefix}stats:{{{OTHER.endpoint_id}}}",
    }
    for key in keys:
        assert 0 < await redis_client.ttl(key) <= a.store.ttl


async def test_a_failure_rate_no_router_sees_alone_opens_the_breaker_in_both(
    client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    a, b = routers(client, prefix, clock, consecutive_failures=100.0)
    for live in (a, b):  # 6 attempts each, 3 failed: fewer than min_requests on either
        for _ in range(3):
            live.first_token(ROUTE, 0.3)
            live.failed(ROUTE, down(), started=False)
        assert live.breaker(EP) == CLOSED
    for live in (a, b):
        assert await live.flush()
    assert await a.refresh()
    assert a.breaker(EP) == OPEN  # 12 attempts, 6 failed: judged on everyone's counts
    assert await b.refresh()
    assert b.breaker(EP) == OPEN and not b.allows(EP)


async def test_a_breaker_one_router_opens_is_respected_by_the_other_after_a_refresh(
    client: redis.Redis, redis_client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    a, b = routers(client, prefix, clock)
    for _ in range(3):
        a.failed(ROUTE, down(), started=False)
    assert a.breaker(EP) == OPEN and not a.allows(EP)
    assert b.breaker(EP) == CLOSED and b.allows(EP)  # not told yet
    assert await a.flush()
    stored = Opening.decode(await redis_client.get(a.store.breaker_key(EP)))
    assert stored is not None and stored.until == pytest.approx(clock.now + OPEN_SECONDS)
    pttl = await redis_client.pttl(a.store.breaker_key(EP))
    assert 0 < pttl <= (OPEN_SECONDS + OPEN_SECONDS) * 1000  # open, then half-open
    assert await b.refresh()
    assert b.breaker(EP) == OPEN and not b.allows(EP)
    assert b.reopens_in(EP) == pytest.approx(OPEN_SECONDS, abs=0.01)
    assert b.allows(OTHER.endpoint_id)  # the other endpoint is not affected
    assert b.reopens_in(OTHER.endpoint_id) is None


async def test_half_open_probes_are_limited_across_routers(
    client: redis.Redis, redis_client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    a, b = routers(client, prefix, clock)  # probes=1
    for _ in range(3):
        a.failed(ROUTE, down(), started=False)
    assert await a.flush()
    assert await b.refresh()
    clock.now += OPEN_SECONDS + 0.01  # (openings are kept to the millisecond)
    assert a.breaker(EP) == b.breaker(EP) == HALF_OPEN
    assert not a.allows(EP) and not b.allows(EP)  # no token yet: both want one
    assert await a.refresh()
    assert await b.refresh()
    assert a.allows(EP)  # the one probe, across both routers
    assert not a.allows(EP) and not b.allows(EP)
    assert await b.refresh()  # asking again does not make a second one
    assert not b.allows(EP)
    # The probe failed: open again, a new opening, seen by the other router.
    first = Opening.decode(await redis_client.get(a.store.breaker_key(EP)))
    a.failed(ROUTE, down(), started=False)
    assert a.breaker(EP) == OPEN
    assert await a.flush()
    assert await b.refresh()
    again = Opening.decode(await redis_client.get(a.store.breaker_key(EP)))
    assert first is not None and again is not None and again.epoch > first.epoch
    assert b.breaker(EP) == OPEN
    # Half-open again: this time the token goes to b, whose probe succeeds.
    clock.now += OPEN_SECONDS + 0.01
    assert not b.allows(EP)
    assert await b.refresh()
    assert not a.allows(EP)
    assert await a.refresh()
    assert b.allows(EP) and not a.allows(EP)
    b.first_token(ROUTE, 0.4)
    assert b.breaker(EP) == CLOSED
    assert await b.flush()
    assert await redis_client.get(a.store.breaker_key(EP)) is None
    assert await a.refresh()
    assert a.breaker(EP) == CLOSED and a.allows(EP)


async def test_a_429_retry_after_cools_the_endpoint_down_in_every_router(
    client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    a, b = routers(client, prefix, clock)
    limited = UpstreamRateLimited("429", provider_id="pa", status=429, retry_after_seconds=45.0)
    a.failed(ROUTE, limited, started=False)
    assert a.breaker(EP) == OPEN
    # Meanwhile b opens it for its own reason, for less long: the longer opening stands.
    for _ in range(3):
        b.failed(ROUTE, down(), started=False)
    assert await a.flush()
    assert await b.flush()
    for live in (a, b):
        assert await live.refresh()
    clock.now += OPEN_SECONDS + 1  # b's own opening would have ended
    assert a.breaker(EP) == b.breaker(EP) == OPEN
    clock.now += 45 - OPEN_SECONDS - 1 + 0.01  # (openings are kept to the millisecond)
    assert a.breaker(EP) == b.breaker(EP) == HALF_OPEN
    # A Retry-After of a day is capped (here at 60 s).
    a.failed(
        ROUTE,
        UpstreamRateLimited("429", provider_id="pa", retry_after_seconds=86_400),
        started=False,
    )
    assert await a.flush()
    assert await b.refresh()
    assert b.breaker(EP) == OPEN
    clock.now += 60 + 0.01
    assert b.breaker(EP) == HALF_OPEN


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    link = redis_proxy(redis_url)
    yield link
    link.stop()


async def test_a_blackholed_redis_never_holds_up_the_request_path_and_counts_wait(
    proxy: FaultProxy, redis_url: str, client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    proxied = create_redis(through(proxy, redis_url), timeout=0.3)
    try:
        live = LiveStats(proxied, settings(prefix), clock=clock)
        reader = LiveStats(client, settings(prefix), clock=clock)
        live.first_token(ROUTE, 0.1)
        assert await live.flush()  # a pooled connection, blackholed below
        proxy.set("blackhole")
        started = time.perf_counter()
        for _ in range(500):
            live.first_token(ROUTE, 0.1)
            live.finished(ROUTE, 20, 1.0)
            live.allows(EP)
            live.figures(EP)
        assert time.perf_counter() - started < 0.25  # memory only: no round trip
        started = time.perf_counter()
        assert not await live.flush()
        assert not await live.refresh()
        assert time.perf_counter() - started < 1.5  # each bounded by redis_seconds (0.3 s)
        assert figures_of(live).requests == 501  # its own counts serve meanwhile
        # Breakers still work alone: open, half-open, a probe granted locally.
        for _ in range(3):
            live.failed(ROUTE, down(), started=False)
        assert live.breaker(EP) == OPEN
        clock.now += OPEN_SECONDS + 0.01
        assert not live.allows(EP)
        assert not await live.refresh()
        assert live.allows(EP) and not live.allows(EP)
        proxy.set("pass")
        assert await live.flush()  # the counts kept while Redis was away
        assert await reader.refresh()
        assert figures_of(reader).requests == 504
        assert figures_of(reader).failures == 3
        assert reader.breaker(EP) == HALF_OPEN  # the opening, written late
    finally:
        await proxied.aclose()


async def test_the_background_task_shares_counts_and_writes_the_last_ones_when_stopped(
    client: redis.Redis, prefix: str
) -> None:
    a, b = LiveStats(client, settings(prefix)), LiveStats(client, settings(prefix))
    a.start()
    b.start()
    try:
        for _ in range(3):
            a.failed(ROUTE, down(), started=False)
        for _ in range(100):
            if b.breaker(EP) == OPEN:
                break
            await asyncio.sleep(0.02)
        assert b.breaker(EP) == OPEN
        a.first_token(OTHER, 0.2)
        await a.stop()  # writes what the last flush did not
        for _ in range(100):
            found = b.figures(OTHER.endpoint_id)
            if found is not None and found.requests == 1:
                break
            await asyncio.sleep(0.02)
        assert figures_of(b, OTHER.endpoint_id).requests == 1
    finally:
        await a.stop()
        await b.stop()


class FakeContext:
    def time_remaining(self) -> float | None:
        return None


async def test_the_public_model_list_shows_each_endpoint_s_live_figures(
    client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    a, b = routers(client, prefix, clock)
    for _ in range(4):
        a.first_token(ROUTE, 0.25)
        a.finished(ROUTE, 60, 2.0)
    a.failed(ROUTE, UpstreamRateLimited("429", provider_id="pa", status=429), started=False)
    assert await a.flush()
    assert await b.refresh()  # b serves the list: it knows the figures only through Redis
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never called: the list is local
    try:
        cache = CatalogCache(channel)
        cache.apply(catalog())
        reads = AccountReads(channel, cache, live=b)
        reply = await reads.list_models(account_pb2.ListModelsRequest(), FakeContext())  # type: ignore[arg-type]
    finally:
        await channel.close(None)
    (model,) = [m for m in reply.models if m.id == MODEL]
    measured, quiet = model.endpoints
    assert measured.id == EP and measured.HasField("stats")
    stats = measured.stats
    assert (stats.window_seconds, stats.requests, stats.rate_limited) == (60, 5, 1)
    assert stats.uptime == pytest.approx(0.8)
    assert 250 / STEP <= stats.ttft_p50_ms <= 250 * STEP
    assert 250 / STEP <= stats.ttft_p90_ms <= 250 * STEP
    assert 30 / STEP <= stats.throughput_p50 <= 30 * STEP
    assert stats.breaker == CLOSED
    assert not quiet.HasField("stats")  # nothing measured: nothing claimed
    # The breaker shows too, once open.
    for _ in range(3):
        b.failed(ROUTE, down(), started=False)
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    try:
        cache = CatalogCache(channel)
        cache.apply(catalog())
        listed = await AccountReads(channel, cache, live=b).list_models(
            account_pb2.ListModelsRequest(),
            FakeContext(),  # type: ignore[arg-type]
        )
    finally:
        await channel.close(None)
    assert listed.models[0].endpoints[0].stats.breaker == OPEN
