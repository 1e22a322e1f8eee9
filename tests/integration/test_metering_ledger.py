"""The usage ledger over gRPC: exactly-once recording, exact money, rollup queries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest

from switchboard.metering.v1 import metering_pb2
from switchboard_core.money import format_usd
from tests.integration.test_metering_app import (
    Metering,
    field_violations,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)

T0 = datetime(2024, 3, 1, 22, 15, tzinfo=UTC)


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)) as running:
        yield running


async def record(metering: Metering, *events: metering_pb2.UsageEvent) -> tuple[int, int]:
    reply = await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=events))
    return reply.recorded_count, reply.duplicate_count


async def query(
    metering: Metering,
    key_id: str,
    bucket: metering_pb2.TimeBucket.ValueType = metering_pb2.TIME_BUCKET_UNSPECIFIED,
    start: datetime | None = None,
    end: datetime | None = None,
) -> metering_pb2.QueryUsageResponse:
    request = metering_pb2.QueryUsageRequest(key_id=key_id, bucket=bucket)
    if start is not None:
        request.start_time.FromDatetime(start)
    if end is not None:
        request.end_time.FromDatetime(end)
    return await metering.stub.QueryUsage(request)


async def test_replayed_batch_changes_nothing(metering: Metering) -> None:
    key = new_key_id()
    events = [usage_event(key, cost="0.25", prompt=i, completion=2 * i) for i in range(1, 6)]
    assert await record(metering, *events) == (5, 0)
    before = await query(metering, key)
    assert await record(metering, *events) == (0, 5)
    assert await record(metering, *reversed(events[:3])) == (0, 3)
    after = await query(metering, key)
    assert after == before
    assert (after.total_requests, after.total_prompt_tokens) == (5, 15)
    assert (after.total_completion_tokens, after.total_cost_usd) == (30, "1.25")


async def test_duplicates_inside_one_batch_count_once(metering: Metering) -> None:
    key = new_key_id()
    a, b = usage_event(key), usage_event(key)
    assert await record(metering, a, b, a, a) == (2, 2)
    assert (await query(metering, key)).total_requests == 2


async def test_costs_sum_exactly(metering: Metering) -> None:
    key = new_key_id()
    # The largest a generation may cost ($10,000), with twelve decimals.
    costs = ["0.000000123"] * 700 + ["0.000000000001", "9999.123456789012", "0.1", "0.2"]
    events = [usage_event(key, cost=cost, prompt=100_000) for cost in costs]
    assert await record(metering, *events[:500]) == (500, 0)
    assert await record(metering, *events[500:]) == (len(costs) - 500, 0)
    usage = await query(metering, key)
    expected = sum((Decimal(c) for c in costs), Decimal(0))
    assert Decimal(usage.total_cost_usd) == expected
    assert usage.total_cost_usd == format_usd(expected) == "9999.423542889013"


async def test_a_bad_event_is_named_and_nothing_is_written(metering: Metering) -> None:
    key = new_key_id()
    good = usage_event(key)
    bad_cost = usage_event(key, cost="1e-5")
    negative = usage_event(key)
    negative.usage.prompt_tokens = -1
    no_id = usage_event(key, generation_id="")
    no_id.generation_id = ""
    # Poisoned (tests/integration/test_ledger_poisoning.py has every case).
    overflowing = usage_event(key)
    overflowing.usage.prompt_tokens = 2**63 - 10
    escape = usage_event(key)
    escape.model_id = "demo/\x1b[31mecho"
    far = usage_event(key, when=datetime(9999, 12, 31, tzinfo=UTC))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(metering, good, bad_cost, negative, no_id, overflowing, escape, far)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [
        "events[1].cost_usd",
        "events[2].usage.prompt_tokens",
        "events[3].generation_id",
        "events[4].usage.prompt_tokens",
        "events[5].model_id",
        "events[6].create_time",
    ]
    assert (await query(metering, key)).total_requests == 0
    with pytest.raises(grpc.aio.AioRpcError) as lookup:
        await metering.stub.GetGeneration(
            metering_pb2.GetGenerationRequest(generation_id="gen-\x00")
        )
    assert lookup.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_generation_round_trips(metering: Metering) -> None:
    event = usage_event(new_key_id(), when=T0, cost="0.000420")
    await record(metering, event)
    got = (
        await metering.stub.GetGeneration(
            metering_pb2.GetGenerationRequest(generation_id=event.generation_id)
        )
    ).generation
    event.cost_usd = "0.00042"  # normalised: no trailing zeros
    assert got == event
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.stub.GetGeneration(metering_pb2.GetGenerationRequest(generation_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_query_by_hour_and_day(metering: Metering) -> None:
    key = new_key_id()
    await record(
        metering,
        usage_event(key, when=T0, model="m/b", cost="0.1"),
        usage_event(key, when=T0 + timedelta(minutes=30), model="m/a", cost="0.2"),
        usage_event(key, when=T0 + timedelta(minutes=40), model="m/a", cost="0.3"),
        usage_event(key, when=T0 + timedelta(hours=1), model="m/a", cost="0.4"),  # 23:15
        usage_event(key, when=T0 + timedelta(hours=2), model="m/a", cost="0.5"),  # next day
        usage_event(key, when=T0 + timedelta(days=5), model="m/a", cost="1"),  # out of range
    )
    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC)
    hours = await query(metering, key, metering_pb2.TIME_BUCKET_HOUR, start, end)
    assert [
        (r.bucket_start.ToDatetime(tzinfo=UTC).hour, r.model_id, r.requests, r.cost_usd)
        for r in hours.rows
    ] == [(22, "m/a", 2, "0.5"), (22, "m/b", 1, "0.1"), (23, "m/a", 1, "0.4"), (0, "m/a", 1, "0.5")]
    days = await query(metering, key, metering_pb2.TIME_BUCKET_DAY, start, end)
    assert [
        (
            r.bucket_start.ToDatetime(tzinfo=UTC).day,
            r.model_id,
            r.requests,
            r.cost_usd,
            r.prompt_tokens,
        )
        for r in days.rows
    ] == [(1, "m/a", 3, "0.9", 30), (1, "m/b", 1, "0.1", 10), (2, "m/a", 1, "0.5", 10)]
    assert days.rows[0].bucket_start.ToDatetime(tzinfo=UTC) == start
    for usage in (hours, days):
        assert (usage.total_requests, usage.total_cost_usd) == (5, "1.5")
        assert (usage.total_prompt_tokens, usage.total_completion_tokens) == (50, 25)


async def test_query_defaults_to_the_last_30_days_by_day(metering: Metering) -> None:
    key = new_key_id()
    now = datetime.now(UTC)
    await record(
        metering,
        usage_event(key, when=now - timedelta(days=2)),
        usage_event(key, when=now - timedelta(days=40)),
    )
    usage = await query(metering, key)
    assert usage.total_requests == 1
    assert usage.rows[0].bucket_start.ToDatetime(tzinfo=UTC).hour == 0


async def test_query_rejects_bad_ranges(metering: Metering) -> None:
    for key, start, end, field in [
        ("", None, None, "key_id"),
        (new_key_id(), T0, T0, "start_time"),
        (new_key_id(), T0 + timedelta(hours=1), T0, "start_time"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await query(metering, key, start=start, end=end)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == [field]


async def test_usage_query_reads_only_rollups(metering: Metering, database_url: str) -> None:
    key = new_key_id()
    await record(metering, usage_event(key, when=T0))
    conn: asyncpg.Connection = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM generations WHERE key_id = $1", key)
    finally:
        await conn.close()
    assert (
        await query(metering, key, start=T0 - timedelta(days=1), end=T0 + timedelta(days=1))
    ).total_requests == 1


async def test_usage_of_an_account_sums_its_keys_only(metering: Metering) -> None:
    async def key_of(account: str) -> str:
        created = await metering.stub.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id=account)
        )
        return created.api_key.id

    first, second, elsewhere = (
        await key_of("usage-co"),
        await key_of("usage-co"),
        await key_of("usage-other"),
    )
    await record(
        metering,
        usage_event(first, when=T0, cost="0.5", model="m/a"),
        usage_event(second, when=T0, cost="0.25", model="m/a"),
        usage_event(second, when=T0, cost="1", model="m/b"),
        usage_event(elsewhere, when=T0, cost="7", prompt=100),
    )
    request = metering_pb2.QueryUsageRequest(account_id="usage-co")
    request.start_time.FromDatetime(T0 - timedelta(days=1))
    request.end_time.FromDatetime(T0 + timedelta(days=1))
    usage = await metering.stub.QueryUsage(request)
    assert (usage.total_requests, usage.total_cost_usd) == (3, "1.75")
    assert [(row.model_id, row.requests, row.cost_usd) for row in usage.rows] == [
        ("m/a", 2, "0.75"),
        ("m/b", 1, "1"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as both:
        await metering.stub.QueryUsage(
            metering_pb2.QueryUsageRequest(key_id=first, account_id="usage-co")
        )
    assert field_violations(both.value) == ["key_id"]
