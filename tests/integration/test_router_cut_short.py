"""A generation cut short is metered through the real relay, usage sink and Redis with the
reasoning the provider was producing: the issue's cancelled Gemini 2.5 Pro stream (10,000
prompt tokens, 8,000 thought tokens counted by Gemini's running usage, 800 visible characters)
is billed $0.0945, as Google bills it, not the $0.0145 its characters alone would say; the
ledger event names the price version that billed it and is marked estimated."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import Decimal

import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore, Limits
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    AdapterEvent,
    Finish,
    FinishEvent,
    PromptUsage,
    TextDelta,
    UsageReport,
)
from switchboard_router.relay import Relay
from tests.integration.test_relay_adapter_events import (
    REQUEST,
    ScriptedAdapter,
    published,
    relay,
    route,
)
from tests.unit.test_router_cut_short import GEMINI_25_PRO

THINKING_THEN_800_CHARS: list[AdapterEvent] = [
    PromptUsage(10_000),
    # Gemini's running usageMetadata: 8,000 thoughts before the first visible chunk.
    UsageReport(10_000, 8_000, reasoning_tokens=8_000, estimated=True),
    TextDelta("y" * 400),
    UsageReport(10_000, 8_100, reasoning_tokens=8_000, estimated=True),
    TextDelta("y" * 400),
    # ... the client cancels here; Gemini would have sent more, and the final usage.
    UsageReport(10_000, 8_900, reasoning_tokens=8_000),
    FinishEvent(Finish.STOP, "STOP"),
]


@pytest.fixture
async def stream_name(redis_prefix: str) -> str:
    return f"{redis_prefix}cut-short-{uuid.uuid4().hex}"


async def rows_of(client: redis.Redis, stream: str) -> list[metering_pb2.UsageEvent]:
    for _ in range(50):  # a cut generation's event is written in the background
        rows = await published(client, stream)
        if rows:
            return rows
        await asyncio.sleep(0.05)
    return []


async def test_a_cancelled_gemini_stream_is_billed_the_thoughts_it_was_producing(
    redis_client: redis.Redis, stream_name: str
) -> None:
    gemini = dataclasses.replace(
        route("good"), price=GEMINI_25_PRO, price_version=5, max_completion_tokens=65_536
    )
    the_relay: Relay = relay(
        {"good": ScriptedAdapter(THINKING_THEN_800_CHARS)}, redis_client, stream_name
    )
    budget = BudgetStore(redis_client, stream_name + ":budget:")
    admission = Admission(budget, 4096, 60)
    caller = Caller("key-1", "account-1", Limits(daily=Decimal(10)))
    reservation = await admission.admit(caller, REQUEST, [gemini])
    seen = 0
    run = the_relay.run(
        REQUEST, [gemini], caller, timeout=5, streamed=True, reservation=reservation
    )
    async for event in run:
        if isinstance(event, TextDelta):
            seen += len(event.text)
            if seen == 800:
                break  # the client goes away
    await run.aclose()
    (row,) = await rows_of(redis_client, stream_name)
    assert row.status == metering_pb2.GENERATION_STATUS_CANCELLED
    assert row.price_version == 5
    assert row.usage.estimated
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (10_000, 8_200)
    assert row.usage.reasoning_tokens == 8_000
    assert row.cost_usd == "0.0945"
    at = row.create_time.ToDatetime()
    assert format_usd(GEMINI_25_PRO.cost(Counts.of(row.usage), at)) == row.cost_usd
    await the_relay.drain()
