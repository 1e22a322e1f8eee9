"""The attempt loop's traffic controls over real HTTP, with a real Redis outbox and budgets.

- The retry budget: when it is empty no hedge starts and no fallback is tried (the last error
  is raised), and each refusal is counted.
- Endpoint caps: an endpoint at its cap is passed over for the next (a spill) with no request
  sent to it; when every endpoint is at a cap the request waits for the soonest slot and tries
  once more, then is refused RESOURCE_EXHAUSTED / ENDPOINT_AT_CAPACITY with RetryInfo. Every
  slot taken is given back however the attempt ends: served, failed, lost a race, cancelled.
- Circuit breakers: an open endpoint is skipped with no request reaching it; when every
  endpoint is open the request fails UNAVAILABLE / CIRCUIT_OPEN with a retry delay; a
  half-open endpoint with no probe left is skipped too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from switchboard_core.errors import ResourceExhausted, SwitchboardError, Unavailable
from switchboard_router.endpoint_stats import HALF_OPEN, OPEN
from switchboard_router.providers.base import UpstreamUnavailable
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.retry_budget import RetryBudget
from tests.fakes import openai_server
from tests.fakes.script import Script
from tests.integration.relay_support import Gate, Harness, Live, harness, hedge, route


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def relay_with(
    redis_client: redis.Redis, redis_prefix: str, **options: Any
) -> AsyncIterator[Harness]:
    prefix = f"{redis_prefix}traffic:{uuid.uuid4().hex[:8]}:"
    async with harness(redis_client, prefix, **options) as relay:
        yield relay


def retry_delay(error: SwitchboardError) -> float:
    """The RetryInfo delay among the details the client gets."""
    for detail in error.details():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return seconds
    raise AssertionError("no RetryInfo")


# --- the retry budget -------------------------------------------------------------------------


async def test_an_empty_retry_budget_starts_no_hedge(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    before = sample("switchboard_router_retry_budget_exhausted_total", kind="hedge")
    empty = RetryBudget(ratio=0, min_per_second=0)
    async with (
        relay_with(redis_client, redis_prefix, retry_budget=empty) as relay,
        openai_server.serve(Script(headers_delay=0.4)) as slow,
        openai_server.serve(Script()) as fast,
    ):
        events = await relay.run(
            [route("slow", slow.base_url), route("fast", fast.base_url)], hedge(0.05)
        )
    assert isinstance(events[0], Started) and events[0].route.provider_id == "slow"
    assert fast.requests == []
    assert sample("switchboard_router_retry_budget_exhausted_total", kind="hedge") == before + 1


async def test_an_empty_retry_budget_tries_no_fallback_and_raises_the_last_error(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    before = sample("switchboard_router_retry_budget_exhausted_total", kind="fallback")
    empty = RetryBudget(ratio=0, min_per_second=0)
    async with (
        relay_with(redis_client, redis_prefix, retry_budget=empty) as relay,
        openai_server.serve(Script(status=500)) as failing,
        openai_server.serve(Script()) as backup,
    ):
        routes = [route("slow", failing.base_url), route("fast", backup.base_url)]
        with pytest.raises(UpstreamUnavailable) as raised:
            await relay.run(routes)
    assert "slow" in raised.value.message
    assert backup.requests == []
    assert sample("switchboard_router_retry_budget_exhausted_total", kind="fallback") == before + 1
    spend = await relay.spend()
    assert spend.reserved == 0 and spend.total == 0


async def test_first_attempts_fill_the_budget_that_fallbacks_draw_on(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0)  # one extra attempt per two requests
    async with (
        relay_with(redis_client, redis_prefix, retry_budget=budget) as relay,
        openai_server.serve(Script(status=500)) as failing,
        openai_server.serve(Script()) as backup,
    ):
        routes = [route("slow", failing.base_url), route("fast", backup.base_url)]
        with pytest.raises(UpstreamUnavailable):  # one deposit: not enough for a fallback
            await relay.run(routes)
        events = await relay.run(routes)  # two deposits: one fallback
        assert isinstance(events[0], Started) and events[0].route.provider_id == "fast"
        with pytest.raises(UpstreamUnavailable):  # spent again
            await relay.run(routes)
    assert len(backup.requests) == 1


# --- endpoint caps ----------------------------------------------------------------------------


async def test_an_endpoint_at_its_cap_spills_to_the_next_with_no_request_sent_to_it(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    gate = Gate()
    gate.fill("slow:x/y")
    before = sample(
        "switchboard_router_endpoint_spills_total", provider="slow", limit="endpoint.max_concurrent"
    )
    async with (
        relay_with(redis_client, redis_prefix, gate=gate) as relay,
        openai_server.serve(Script()) as capped,
        openai_server.serve(Script()) as backup,
    ):
        events = await relay.run([route("slow", capped.base_url), route("fast", backup.base_url)])
    assert isinstance(events[0], Started) and events[0].route.provider_id == "fast"
    assert capped.requests == []
    assert gate.acquired == ["fast:x/y"] and gate.held == 0  # released when it ended
    assert (
        sample(
            "switchboard_router_endpoint_spills_total",
            provider="slow",
            limit="endpoint.max_concurrent",
        )
        == before + 1
    )


async def test_when_every_endpoint_is_at_its_cap_the_request_waits_for_a_slot(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    gate = Gate(retry_after=0.2)
    gate.fill("slow:x/y", 0.15)  # frees before the announced retry
    gate.fill("fast:x/y")
    before = sample("switchboard_router_endpoint_queue_total", result="served")
    async with (
        relay_with(redis_client, redis_prefix, gate=gate, queue_seconds=1.0) as relay,
        openai_server.serve(Script()) as first,
        openai_server.serve(Script()) as second,
    ):
        started = time.monotonic()
        events = await relay.run([route("slow", first.base_url), route("fast", second.base_url)])
        elapsed = time.monotonic() - started
    assert isinstance(events[0], Started) and events[0].route.provider_id == "slow"
    assert 0.2 <= elapsed < 1.0
    assert second.requests == [] and gate.held == 0
    assert sample("switchboard_router_endpoint_queue_total", result="served") == before + 1


async def test_when_the_caps_hold_past_the_wait_the_request_is_refused_with_retry_info(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    gate = Gate(retry_after=5.0)
    gate.fill("slow:x/y")
    gate.fill("fast:x/y")
    before = sample("switchboard_router_endpoint_queue_total", result="refused")
    async with (
        relay_with(redis_client, redis_prefix, gate=gate, queue_seconds=0.2) as relay,
        openai_server.serve(Script()) as first,
        openai_server.serve(Script()) as second,
    ):
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as raised:
            await relay.run([route("slow", first.base_url), route("fast", second.base_url)])
        elapsed = time.monotonic() - started
    error = raised.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "ENDPOINT_AT_CAPACITY"
    assert error.metadata == {"endpoint": "slow:x/y", "limit": "endpoint.max_concurrent"}
    assert retry_delay(error) == 5.0
    assert 0.2 <= elapsed < 1.0  # waited queue_seconds (less than the retry), tried once more
    assert first.requests == second.requests == [] and gate.acquired == []
    assert sample("switchboard_router_endpoint_queue_total", result="refused") == before + 1
    spend = await relay.spend()
    assert spend.reserved == 0 and spend.total == 0


async def test_a_hedge_takes_a_slot_and_both_are_given_back_however_the_race_ends(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    gate = Gate()
    async with (
        relay_with(redis_client, redis_prefix, gate=gate) as relay,
        openai_server.serve(Script(headers_delay=5.0)) as slow,
        openai_server.serve(Script()) as fast,
        openai_server.serve(Script(headers_delay=5.0)) as hung,
    ):
        await relay.run([route("slow", slow.base_url), route("fast", fast.base_url)], hedge(0.05))
        assert sorted(gate.acquired) == ["fast:x/y", "slow:x/y"] and gate.held == 0
        # A client that leaves mid-race: both slots come back too.
        routes = [route("slow", slow.base_url), route("other", hung.base_url)]
        events: list[RelayEvent] = []
        task = asyncio.create_task(relay.run(routes, hedge(0.05), into=events))
        for _ in range(100):
            if gate.held == 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gate.held == 0 and len(gate.acquired) == 4


async def test_a_hedge_spills_past_a_capped_endpoint_and_never_queues(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    gate = Gate(retry_after=0.05)
    gate.fill("other:x/y")
    gate.fill("third:x/y")
    async with (
        relay_with(redis_client, redis_prefix, gate=gate, queue_seconds=2.0) as relay,
        openai_server.serve(Script(headers_delay=0.4)) as slow,
        openai_server.serve(Script()) as capped,
        openai_server.serve(Script()) as also_capped,
    ):
        routes = [
            route("slow", slow.base_url),
            route("other", capped.base_url),
            route("third", also_capped.base_url),
        ]
        started = time.monotonic()
        events = await relay.run(routes, hedge(0.05))
        elapsed = time.monotonic() - started
    assert isinstance(events[0], Started) and events[0].route.provider_id == "slow"
    assert isinstance(events[-1], Completed)
    assert capped.requests == also_capped.requests == []
    assert elapsed < 1.0 and gate.held == 0


# --- circuit breakers -------------------------------------------------------------------------


async def test_an_open_circuit_is_skipped_without_a_request(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    live = Live(breakers={"slow:x/y": OPEN})
    gate = Gate()
    before = sample("switchboard_router_circuit_skips_total", provider="slow")
    async with (
        relay_with(redis_client, redis_prefix, live=live, gate=gate) as relay,
        openai_server.serve(Script()) as broken,
        openai_server.serve(Script()) as backup,
    ):
        events = await relay.run([route("slow", broken.base_url), route("fast", backup.base_url)])
    assert isinstance(events[0], Started) and events[0].route.provider_id == "fast"
    assert broken.requests == []
    assert gate.acquired == ["fast:x/y"]  # no slot taken on the open endpoint either
    assert live.asked == ["fast:x/y"]
    assert sample("switchboard_router_circuit_skips_total", provider="slow") == before + 1


async def test_a_half_open_circuit_lets_a_probe_through_and_skips_once_none_is_left(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    live = Live(breakers={"slow:x/y": HALF_OPEN}, probes={"slow:x/y": 1})
    gate = Gate()
    async with (
        relay_with(redis_client, redis_prefix, live=live, gate=gate) as relay,
        openai_server.serve(Script()) as probed,
        openai_server.serve(Script()) as backup,
    ):
        routes = [route("slow", probed.base_url), route("fast", backup.base_url)]
        first = await relay.run(routes)
        second = await relay.run(routes)
    assert isinstance(first[0], Started) and first[0].route.provider_id == "slow"
    assert isinstance(second[0], Started) and second[0].route.provider_id == "fast"
    assert len(probed.requests) == 1 and gate.held == 0  # the refused probe's slot came back


async def test_when_every_circuit_is_open_the_request_fails_circuit_open_with_a_delay(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    live = Live(breakers={"slow:x/y": OPEN, "fast:x/y": OPEN})
    async with (
        relay_with(redis_client, redis_prefix, live=live, circuit_retry_seconds=7.0) as relay,
        openai_server.serve(Script()) as first,
        openai_server.serve(Script()) as second,
    ):
        with pytest.raises(Unavailable) as raised:
            await relay.run([route("slow", first.base_url), route("fast", second.base_url)])
    error = raised.value
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "CIRCUIT_OPEN"
    assert "slow:x/y" in error.message and "fast:x/y" in error.message
    assert retry_delay(error) == 7.0
    assert first.requests == second.requests == []
    spend = await relay.spend()
    assert spend.reserved == 0 and spend.total == 0
