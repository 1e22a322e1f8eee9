"""The endpoint gate (capacity.RedisEndpointGate) against the real Redis: a concurrency cap
hands out its slots then answers AtCapacity until one is released, a requests-per-minute cap
answers with the exact wait, both are charged or neither, two routers share the caps, an
endpoint without caps never asks Redis, and a silent Redis lets attempts through within the
deadline (fail open), counted."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis

from switchboard_core.rate_limits import RateLimiter
from switchboard_core.redis_client import RedisDeadline, create_redis
from switchboard_router import metrics
from switchboard_router.capacity import (
    BUSY_RETRY_SECONDS,
    AtCapacity,
    EndpointSlot,
    RedisEndpointGate,
)
from switchboard_router.catalog_cache import Capacity, Route
from switchboard_router.leases import LeaseKeeper
from tests.faults.links import redis_proxy, through
from tests.faults.proxy import FaultProxy
from tests.integration.test_rate_limits import Clock
from tests.integration.test_router_admission import ROUTE

LEASE = 30.0


def capped(max_concurrent: int = 0, requests_per_minute: int = 0) -> Route:
    return dataclasses.replace(
        ROUTE,
        endpoint_id=f"demo:{uuid.uuid4().hex[:6]}",
        capacity=Capacity(max_concurrent, requests_per_minute),
    )


def gate(client: redis.Redis, prefix: str, clock: Clock | None = None) -> RedisEndpointGate:
    limiter = RateLimiter(client, prefix, clock=clock)
    deadline = RedisDeadline(0.3)
    return RedisEndpointGate(limiter, LeaseKeeper(limiter, deadline, LEASE), deadline)


@pytest.fixture
def prefix(redis_prefix: str, redis_client: redis.Redis) -> str:
    return f"{redis_prefix}gate{uuid.uuid4().hex[:6]}:"


async def test_a_concurrency_cap_is_shared_by_routers_and_freed_by_release(
    redis_url: str, prefix: str
) -> None:
    clients = [create_redis(redis_url), create_redis(redis_url)]
    one, other = (gate(client, prefix) for client in clients)
    route = capped(max_concurrent=2)
    first, second = await one.acquire(route), await other.acquire(route)
    assert isinstance(first, EndpointSlot) and first.lease
    assert isinstance(second, EndpointSlot) and second.lease
    refused = await one.acquire(route)
    assert refused == AtCapacity(route.endpoint_id, "endpoint.max_concurrent", BUSY_RETRY_SECONDS)
    other.release(second)
    await other.drain()
    third = await one.acquire(route)
    assert isinstance(third, EndpointSlot) and third.lease
    for client in clients:
        await client.aclose()


async def test_a_requests_per_minute_cap_answers_with_the_exact_wait(
    redis_client: redis.Redis, prefix: str
) -> None:
    clock = Clock()
    endpoints = gate(redis_client, prefix, clock)
    route = capped(requests_per_minute=3)
    for _ in range(3):
        slot = await endpoints.acquire(route)
        assert slot == EndpointSlot(route.endpoint_id)  # no lease: no concurrency cap
        endpoints.release(slot)  # nothing to give back
    refused = await endpoints.acquire(route)
    assert refused == AtCapacity(route.endpoint_id, "endpoint.requests_per_minute", 20.0)
    clock.advance(20)
    assert isinstance(await endpoints.acquire(route), EndpointSlot)


async def test_both_caps_are_charged_or_neither(redis_client: redis.Redis, prefix: str) -> None:
    clock = Clock()
    endpoints = gate(redis_client, prefix, clock)
    route = capped(max_concurrent=1, requests_per_minute=2)
    held = await endpoints.acquire(route)
    assert isinstance(held, EndpointSlot)
    for _ in range(3):  # refused by the concurrency cap: the rpm cap is not charged
        refused = await endpoints.acquire(route)
        assert isinstance(refused, AtCapacity) and refused.limit == "endpoint.max_concurrent"
    endpoints.release(held)
    await endpoints.drain()
    second = await endpoints.acquire(route)  # the 2nd of 2 a minute
    assert isinstance(second, EndpointSlot)
    endpoints.release(second)
    await endpoints.drain()
    refused = await endpoints.acquire(route)
    assert refused == AtCapacity(route.endpoint_id, "endpoint.requests_per_minute", 30.0)


async def test_an_endpoint_without_caps_never_asks_redis(prefix: str) -> None:
    client = create_redis("redis://127.0.0.1:1/0")  # nothing listens
    endpoints = gate(client, prefix)
    unavailable = metrics.RATE_LIMIT_CHECKS.labels("endpoint", "unavailable")
    before = unavailable._value.get()
    assert await endpoints.acquire(ROUTE) == EndpointSlot(ROUTE.endpoint_id)
    assert unavailable._value.get() == before
    await client.aclose()


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


async def test_a_silent_redis_lets_attempts_through_within_the_deadline(
    proxy: FaultProxy, proxied: redis.Redis, prefix: str
) -> None:
    endpoints = gate(proxied, prefix)
    route = capped(max_concurrent=1)
    assert isinstance(await endpoints.acquire(route), EndpointSlot)  # the one slot
    unavailable = metrics.RATE_LIMIT_CHECKS.labels("endpoint", "unavailable")
    before = unavailable._value.get()
    proxy.set("blackhole")
    started = time.monotonic()
    slot = await endpoints.acquire(route)  # at the cap, but Redis cannot say so
    assert time.monotonic() - started < 0.3 + 0.2
    assert slot == EndpointSlot(route.endpoint_id)  # a slot without a lease
    endpoints.release(slot)  # nothing to give back, nothing raised
    assert unavailable._value.get() == before + 1
