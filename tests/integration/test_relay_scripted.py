"""The relay's fallback, cut-short, cancel and settle, on scripted adapters
(:mod:`switchboard_router.testing`): no process, no HTTP, a real Redis outbox and real budgets.

- An attempt that fails before its first event, however it fails (an error at once or late, a
  stall, an error after the provider's prompt counts), moves on to the next endpoint; the
  client sees one stream, and the request is metered once, for the endpoint that answered.
- After the first event the generation is committed: a failure midway ends the stream (no
  fallback) and is metered FAILED with estimated usage.
- A client that stops reading is metered CANCELLED at once, and the upstream is closed.
- The reservation settles to the sum of the rows the request wrote, also when a hedge's loser
  and a cut-short winner are both billed."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as redis

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.money import parse_usd
from switchboard_router.canonical import (
    Finish,
    FinishEvent,
    HedgePolicy,
    PromptUsage,
    TextDelta,
    UsageReport,
)
from switchboard_router.providers.base import StallLimits, UpstreamUnavailable
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.testing import (
    Delay,
    Fail,
    ScriptedAdapter,
    Stall,
    Step,
    scripted_relay,
    scripted_route,
    unavailable,
)

COMPLETED = metering_pb2.GENERATION_STATUS_COMPLETED
CANCELLED = metering_pb2.GENERATION_STATUS_CANCELLED
FAILED = metering_pb2.GENERATION_STATUS_FAILED
ANSWER: list[Step] = [
    TextDelta("fine"),
    TextDelta(" thanks"),
    UsageReport(3, 2),
    FinishEvent(Finish.STOP, "stop"),
]
QUICK_STALL = StallLimits(first_byte=0.05, idle=0.05)


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}{uuid.uuid4().hex[:8]}:"


def texts(events: list[RelayEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


@pytest.mark.parametrize(
    "failing",
    [
        [Fail(unavailable("down"))],
        [Delay(0.02), Fail(unavailable("down", 502))],
        [Stall()],
        [PromptUsage(7), Fail(unavailable("down"))],  # counts are no first event
    ],
    ids=["at-once", "late", "stall", "after-prompt-counts"],
)
async def test_a_failure_before_the_first_event_falls_back_and_is_metered_once(
    redis_client: redis.Redis, prefix: str, failing: list[Step]
) -> None:
    adapter = ScriptedAdapter({"down": failing, "up": ANSWER})
    routes = [scripted_route("down", stall=QUICK_STALL), scripted_route("up")]
    async with scripted_relay(adapter, redis_client, prefix) as relay:
        events = await relay.run(routes)
        rows = await relay.published(1)
        spend = await relay.spend()
    assert adapter.calls == ["down", "up"]
    opening = events[0]
    assert isinstance(opening, Started) and opening.route.provider_id == "up"
    assert texts(events) == ["fine", " thanks"]
    assert isinstance(events[-1], Completed)
    (row,) = rows  # the attempt that failed before a word is not billed
    assert (row.generation_id, row.attempt) == (opening.generation_id, 1)
    assert (row.provider_id, row.status) == ("up", COMPLETED)
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (3, 2)
    assert not row.usage.estimated
    assert row.cost_usd == "0.000007"  # 3 x $1/M + 2 x $2/M
    assert spend.reserved == 0 and spend.total == parse_usd(row.cost_usd)


async def test_a_failure_midway_ends_the_stream_without_fallback_and_is_metered_failed(
    redis_client: redis.Redis, prefix: str
) -> None:
    cut: list[Step] = [TextDelta("Once upon a time"), Delay(0.01), Fail(unavailable("cut"))]
    adapter = ScriptedAdapter({"cut": cut, "spare": ANSWER})
    events: list[RelayEvent] = []
    async with scripted_relay(adapter, redis_client, prefix) as relay:
        with pytest.raises(UpstreamUnavailable):
            await relay.run([scripted_route("cut"), scripted_route("spare")], into=events)
        rows = await relay.published(1)
        spend = await relay.spend()
    assert adapter.calls == ["cut"]  # committed after the first event: no fallback
    assert texts(events) == ["Once upon a time"]
    assert not any(isinstance(event, Completed) for event in events)
    (row,) = rows
    assert (row.provider_id, row.status) == ("cut", FAILED)
    assert row.finish_reason == common_pb2.FINISH_REASON_ERROR
    assert row.usage.estimated and row.usage.completion_tokens > 0
    assert parse_usd(row.cost_usd) > 0
    assert spend.reserved == 0 and spend.total == parse_usd(row.cost_usd)


async def test_a_client_that_stops_reading_is_metered_cancelled_at_once_and_the_upstream_closed(
    redis_client: redis.Redis, prefix: str
) -> None:
    # The rest of the answer would take 30 s: the row must not wait for it.
    slow: list[Step] = [TextDelta("Once"), TextDelta(" upon"), Delay(30), TextDelta(" a time")]
    adapter = ScriptedAdapter({"slow": slow})
    async with scripted_relay(adapter, redis_client, prefix) as relay:
        stream = await relay.start([scripted_route("slow")])
        seen = [await anext(stream), await anext(stream)]  # the opening and the first text
        await stream.aclose()
        assert adapter.closed == ["slow"]  # closed by the relay, not when collected
        rows = await asyncio.wait_for(relay.published(1), 2.0)
        spend = await relay.spend()
    assert isinstance(seen[0], Started) and texts(seen) == ["Once"]
    (row,) = rows
    assert row.status == CANCELLED and row.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert row.usage.estimated and row.usage.completion_tokens > 0
    assert spend.reserved == 0 and spend.total == parse_usd(row.cost_usd) > 0


async def test_a_cancelled_request_task_is_metered_cancelled(
    redis_client: redis.Redis, prefix: str
) -> None:
    adapter = ScriptedAdapter({"slow": [TextDelta("Once"), Delay(30), TextDelta(" upon")]})
    events: list[RelayEvent] = []
    async with scripted_relay(adapter, redis_client, prefix) as relay:
        task = asyncio.create_task(relay.run([scripted_route("slow")], into=events))
        for _ in range(400):  # up to 2 s for the opening and the first text
            if len(events) >= 2:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = await relay.published(1)
        spend = await relay.spend()
    assert adapter.closed == ["slow"]
    (row,) = rows
    assert row.status == CANCELLED
    assert spend.reserved == 0 and spend.total == parse_usd(row.cost_usd) > 0


async def test_the_reservation_settles_to_the_sum_of_a_hedge_loser_and_a_cut_winner(
    redis_client: redis.Redis, prefix: str
) -> None:
    adapter = ScriptedAdapter(
        {
            # Slow to its first token: the hedge starts beside it after 0.05 s and wins.
            "slow": [PromptUsage(11), Delay(30), TextDelta("late")],
            "fast": [TextDelta("quick"), Delay(0.01), Fail(unavailable("fast"))],
        }
    )
    routes = [scripted_route("slow"), scripted_route("fast", prompt_price="3")]
    events: list[RelayEvent] = []
    hedge = HedgePolicy(enabled=True, delay=0.05)
    async with scripted_relay(adapter, redis_client, prefix) as relay:
        with pytest.raises(UpstreamUnavailable):
            await relay.run(routes, hedge=hedge, into=events)
        loser, winner = await relay.published(2)
        spend = await relay.spend()
    assert adapter.calls == ["slow", "fast"] and adapter.closed == ["slow"]
    opening = events[0]
    assert isinstance(opening, Started) and opening.route.provider_id == "fast"
    assert (loser.generation_id, loser.status) == (f"{opening.generation_id}-a0", CANCELLED)
    assert loser.usage.prompt_tokens == 11  # the provider's own counts, sent before it lost
    assert (winner.generation_id, winner.status) == (opening.generation_id, FAILED)
    costs = parse_usd(loser.cost_usd), parse_usd(winner.cost_usd)
    assert all(cost > 0 for cost in costs)
    assert spend.reserved == 0 and spend.total == sum(costs)
