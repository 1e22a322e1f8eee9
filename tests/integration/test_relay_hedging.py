"""Hedged requests over real HTTP, with a real Redis outbox and real budgets.

- When the attempt in flight has not produced its first event within the delay, the next
  endpoint starts; the first to answer wins, the other's connection is closed at once.
- The loser is metered as its own attempt (its own generation id, ``<id>-a<attempt>``) for
  what it consumed: the provider's early prompt counts when it sent them, else the estimate;
  the reservation covers both attempts and settles to the sum of the two ledger rows.
- No hedge when the first token comes in time; never more than one hedge in flight; an error
  on one attempt lets the other go on, and starts the next endpoint when the survivor is
  already late; a live time to first token sets the delay.
- A client that leaves during the race closes both upstreams and both are metered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from switchboard.metering.v1 import metering_pb2
from switchboard_core.money import format_usd, parse_usd
from switchboard_router.admission import worst_case_cost
from switchboard_router.canonical import UsageReport
from switchboard_router.endpoint_stats import Figures, Percentiles
from switchboard_router.generation import cost_of
from switchboard_router.providers.base import UpstreamUnavailable
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.usage_estimate import estimate_prompt_tokens
from tests.fakes import anthropic_server, openai_server
from tests.fakes.faults import Faults
from tests.fakes.script import Script
from tests.integration.relay_support import (
    ANTHROPIC,
    REQUEST,
    Harness,
    Live,
    harness,
    hedge,
    route,
)

CANCELLED = metering_pb2.GENERATION_STATUS_CANCELLED
COMPLETED = metering_pb2.GENERATION_STATUS_COMPLETED


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def relay(redis_client: redis.Redis, redis_prefix: str) -> AsyncIterator[Harness]:
    async with harness(redis_client, f"{redis_prefix}hedge:{uuid.uuid4().hex[:8]}:") as h:
        yield h


def prompt_only_cost(row: metering_pb2.UsageEvent, endpoint_route: object) -> str:
    """What a loser that streamed nothing costs: its prompt at its endpoint's price."""
    usage = UsageReport(prompt_tokens=row.usage.prompt_tokens, completion_tokens=0)
    at = datetime.fromtimestamp(row.create_time.ToSeconds(), UTC)
    return format_usd(cost_of(endpoint_route, usage, at=at))  # type: ignore[arg-type]


async def test_a_hedge_starts_after_the_delay_the_fast_endpoint_wins_and_the_loser_is_metered(
    relay: Harness,
) -> None:
    before = (
        sample("switchboard_router_hedges_total", provider="fast"),
        sample("switchboard_router_hedge_races_total", winner="hedge"),
        sample("switchboard_router_abandoned_attempts_total", provider="slow", cause="hedge_lost"),
    )
    async with (
        # Headers at once, the first token after 5 s: a provider slow to first token.
        openai_server.serve(Script(), faults=Faults(first_token_delay=5.0)) as slow,
        openai_server.serve(Script()) as fast,
    ):
        routes = [route("slow", slow.base_url), route("fast", fast.base_url, price="3")]
        started = time.monotonic()
        events = await relay.run(routes, hedge(0.2))
        elapsed = time.monotonic() - started
        # The loser's connection was closed as the race was decided, not when its 5 s ran out.
        await asyncio.wait_for(slow.disconnected.wait(), 1.0)
        assert slow.disconnected_at - (fast.finished_at or slow.disconnected_at) < 1.0
    assert 0.2 <= elapsed < 1.5
    opening = events[0]
    assert isinstance(opening, Started) and opening.route.provider_id == "fast"
    assert isinstance(events[-1], Completed)
    assert len(slow.requests) == len(fast.requests) == 1

    first, second = await relay.published(2)
    # The loser: attempt 0, its own id derived from the served one, its prompt and nothing more.
    assert (first.generation_id, first.attempt) == (f"{opening.generation_id}-a0", 0)
    assert (first.provider_id, first.status) == ("slow", CANCELLED)
    assert first.usage.prompt_tokens == estimate_prompt_tokens(REQUEST)
    assert first.usage.completion_tokens == 0 and first.usage.estimated
    assert first.cost_usd == prompt_only_cost(first, routes[0])
    # The winner: the id the client was given, attempt 1, the provider's own usage.
    assert (second.generation_id, second.attempt) == (opening.generation_id, 1)
    assert (second.provider_id, second.status) == ("fast", COMPLETED)
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (12, 4)
    completed = events[-1]
    assert isinstance(completed, Completed) and format_usd(completed.cost) == second.cost_usd

    # The reservation covered both attempts and settled to the sum of the two rows.
    spend = await relay.spend()
    assert spend.reserved == 0
    assert spend.total == parse_usd(first.cost_usd) + parse_usd(second.cost_usd)
    both = worst_case_cost(REQUEST, routes, 4096, hedged=True)
    assert both > worst_case_cost(REQUEST, routes, 4096)

    assert relay.observer.seen == [("fast", "first_token"), ("fast", "finished")]  # no blame
    assert sample("switchboard_router_hedges_total", provider="fast") == before[0] + 1
    assert sample("switchboard_router_hedge_races_total", winner="hedge") == before[1] + 1
    assert (
        sample("switchboard_router_abandoned_attempts_total", provider="slow", cause="hedge_lost")
        == before[2] + 1
    )


async def test_no_hedge_when_the_first_token_comes_before_the_delay(relay: Harness) -> None:
    async with (
        openai_server.serve(Script()) as first,
        openai_server.serve(Script()) as backup,
    ):
        routes = [route("fast", first.base_url), route("other", backup.base_url)]
        events = await relay.run(routes, hedge(1.0))
    assert isinstance(events[0], Started) and events[0].route.provider_id == "fast"
    assert backup.requests == []
    (row,) = await relay.published(1)
    assert (row.generation_id, row.attempt, row.status) == (events[0].generation_id, 0, COMPLETED)
    spend = await relay.spend()
    assert spend.reserved == 0 and spend.total == parse_usd(row.cost_usd)


async def test_never_more_than_one_hedge_in_flight(relay: Harness) -> None:
    async with (
        openai_server.serve(Script(headers_delay=0.8)) as slow,
        openai_server.serve(Script(headers_delay=5.0)) as other,
        openai_server.serve(Script()) as third,
    ):
        routes = [
            route("slow", slow.base_url),
            route("other", other.base_url),
            route("third", third.base_url),
        ]
        events = await relay.run(routes, hedge(0.1))
        await asyncio.wait_for(other.disconnected.wait(), 1.0)
    assert isinstance(events[0], Started) and events[0].route.provider_id == "slow"
    assert third.requests == []  # two in flight: the third endpoint was never sent to
    winner, loser = await relay.published(2)
    assert (winner.provider_id, winner.attempt, winner.status) == ("slow", 0, COMPLETED)
    assert (loser.provider_id, loser.attempt, loser.status) == ("other", 1, CANCELLED)


async def test_an_error_on_the_hedge_lets_the_first_attempt_go_on(relay: Harness) -> None:
    async with (
        openai_server.serve(Script(headers_delay=0.6)) as slow,
        openai_server.serve(Script(status=500)) as failing,
    ):
        routes = [route("slow", slow.base_url), route("other", failing.base_url)]
        events = await relay.run(routes, hedge(0.1))
    assert isinstance(events[0], Started) and events[0].route.provider_id == "slow"
    assert isinstance(events[-1], Completed)
    assert len(failing.requests) == 1
    (row,) = await relay.published(1)  # the failed hedge consumed nothing: no row
    assert (row.provider_id, row.attempt) == ("slow", 0)
    assert relay.observer.seen[0] == ("other", "failed:UPSTREAM_UNAVAILABLE")


async def test_an_error_on_the_first_attempt_lets_the_hedge_go_on(relay: Harness) -> None:
    async with (
        openai_server.serve(Script(headers_delay=0.4, status=500)) as failing,
        openai_server.serve(Script(headers_delay=0.6)) as hedged,
    ):
        routes = [route("slow", failing.base_url), route("other", hedged.base_url)]
        events = await relay.run(routes, hedge(0.1))
    assert isinstance(events[0], Started) and events[0].route.provider_id == "other"
    (row,) = await relay.published(1)
    assert (row.provider_id, row.attempt, row.status) == ("other", 1, COMPLETED)
    spend = await relay.spend()
    assert spend.total == parse_usd(row.cost_usd)


async def test_when_the_hedge_fails_a_late_first_attempt_draws_the_next_endpoint_at_once(
    relay: Harness,
) -> None:
    async with (
        openai_server.serve(Script(headers_delay=5.0)) as slow,
        openai_server.serve(Script(status=503)) as failing,
        openai_server.serve(Script()) as third,
    ):
        routes = [
            route("slow", slow.base_url),
            route("other", failing.base_url),
            route("third", third.base_url),
        ]
        started = time.monotonic()
        events = await relay.run(routes, hedge(0.1))
        elapsed = time.monotonic() - started
    assert isinstance(events[0], Started) and events[0].route.provider_id == "third"
    assert elapsed < 1.0
    loser, winner = await relay.published(2)
    assert (loser.provider_id, loser.attempt, loser.status) == ("slow", 0, CANCELLED)
    assert (winner.provider_id, winner.attempt, winner.status) == ("third", 2, COMPLETED)
    spend = await relay.spend()
    assert spend.total == parse_usd(loser.cost_usd) + parse_usd(winner.cost_usd)


async def test_a_loser_that_sent_its_prompt_counts_is_billed_those(relay: Harness) -> None:
    async with (
        # Anthropic's message_start (input tokens) comes at once, its first text after 3 s.
        anthropic_server.serve(Script(chunk_delay=3.0)) as slow,
        openai_server.serve(Script()) as fast,
    ):
        routes = [route("anthropic", slow.base_url, ANTHROPIC), route("fast", fast.base_url)]
        await relay.run(routes, hedge(0.3))
        await asyncio.wait_for(slow.disconnected.wait(), 1.0)
    loser, winner = await relay.published(2)
    assert (loser.provider_id, loser.status) == ("anthropic", CANCELLED)
    assert loser.usage.prompt_tokens == 12  # the provider's count, not the estimate
    assert loser.usage.completion_tokens == 0
    assert loser.cost_usd == prompt_only_cost(loser, routes[0])
    spend = await relay.spend()
    assert spend.total == parse_usd(loser.cost_usd) + parse_usd(winner.cost_usd)


async def test_the_live_time_to_first_token_sets_the_delay(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    quick = Percentiles(0.05, 0.08, 0.1, 0.2)
    live = Live(stats={"slow:x/y": Figures(300, 100, 0, 0, quick, None)})
    prefix = f"{redis_prefix}hedge:{uuid.uuid4().hex[:8]}:"
    async with (
        harness(redis_client, prefix, live=live) as relay,
        openai_server.serve(Script(headers_delay=5.0)) as slow,
        openai_server.serve(Script()) as fast,
    ):
        routes = [route("slow", slow.base_url), route("fast", fast.base_url)]
        started = time.monotonic()
        # A fixed delay of 30 s, but the endpoint's p90 is 0.1 s: the hedge starts then.
        events = await relay.run(routes, hedge(30.0, percentile=90))
        elapsed = time.monotonic() - started
    assert isinstance(events[0], Started) and events[0].route.provider_id == "fast"
    assert 0.1 <= elapsed < 1.0


async def test_a_client_cancel_during_the_race_closes_both_upstreams_and_meters_both(
    relay: Harness,
) -> None:
    before = sample(
        "switchboard_router_abandoned_attempts_total", provider="slow", cause="cancelled"
    )
    async with (
        openai_server.serve(Script(headers_delay=5.0)) as slow,
        openai_server.serve(Script(headers_delay=5.0)) as other,
    ):
        routes = [route("slow", slow.base_url), route("other", other.base_url)]
        events: list[RelayEvent] = []
        task = asyncio.create_task(relay.run(routes, hedge(0.1), into=events))
        for _ in range(100):  # until both attempts reached their upstreams
            if slow.requests and other.requests:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(slow.disconnected.wait(), 1.0)
        await asyncio.wait_for(other.disconnected.wait(), 1.0)
    assert events == []  # the client saw nothing: no attempt answered
    first, second = await relay.published(2)
    assert first.generation_id.endswith("-a0") and second.generation_id.endswith("-a1")
    assert first.generation_id[:-3] == second.generation_id[:-3]
    assert {first.provider_id, second.provider_id} == {"slow", "other"}
    assert first.status == second.status == CANCELLED
    spend = await relay.spend()
    assert spend.reserved == 0
    assert spend.total == parse_usd(first.cost_usd) + parse_usd(second.cost_usd) > Decimal(0)
    assert (
        sample("switchboard_router_abandoned_attempts_total", provider="slow", cause="cancelled")
        == before + 1
    )


async def test_without_a_second_endpoint_nothing_is_hedged_and_the_error_stands(
    relay: Harness,
) -> None:
    async with openai_server.serve(Script(headers_delay=0.3, status=500)) as failing:
        with pytest.raises(UpstreamUnavailable):
            await relay.run([route("slow", failing.base_url)], hedge(0.05))
    assert len(failing.requests) == 1
    spend = await relay.spend()
    assert spend.reserved == 0 and spend.total == 0


async def test_a_stream_the_client_leaves_settles_to_what_its_row_records(relay: Harness) -> None:
    """The cut generation is counted in the background; the reservation waits for its cost
    rather than being released at 0 when the request ends."""
    async with openai_server.serve(
        Script(text=("Once", " upon", " a", " time"), stall_after=2)
    ) as up:
        events: list[RelayEvent] = []
        task = asyncio.create_task(relay.run([route("slow", up.base_url)], into=events))
        for _ in range(100):
            if len(events) >= 2:  # started, and some text
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    (row,) = await relay.published(1)
    assert row.status == CANCELLED and row.usage.completion_tokens > 0
    spend = await relay.spend()
    assert spend.reserved == 0 and spend.total == parse_usd(row.cost_usd) > 0
