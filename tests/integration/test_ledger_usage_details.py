"""Every count of a usage report and the price version that billed it, in the ledger: through
RecordUsage and the outbox and back through GetGeneration, summed once into the rollups
however often replayed; migration 0006 on a ledger that has rows already; and reconcile's
repricing of past rows with the price of their version (or the one in force then)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.db import create_pool, migrate
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts, PriceSheet
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering import migrations
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.event_rules import DETAIL_FIELDS, EventWindow
from switchboard_metering.ledger import COUNT_FIELDS, Ledger
from switchboard_metering.partitions import Partitions
from switchboard_metering.prices import PriceBook
from switchboard_metering.reconcile import reconcile
from switchboard_metering.repricing import reprice
from tests.integration.test_metering_app import (
    Metering,
    eventually,
    field_violations,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)

# Every part inside its total: 1h writes of the writes, audio/image/video of the prompt,
# cached audio of the cached and of the audio, audio output beside the reasoning.
FULL_USAGE = common_pb2.Usage(
    prompt_tokens=1000,
    completion_tokens=500,
    cached_tokens=200,
    reasoning_tokens=100,
    cache_write_tokens=100,
    cache_write_1h_tokens=40,
    audio_prompt_tokens=300,
    image_prompt_tokens=100,
    video_prompt_tokens=50,
    cached_audio_tokens=20,
    audio_completion_tokens=60,
    web_searches=2,
    input_images=3,
)


def full_event(key: str, *, when: datetime = T0, version: int = 12) -> metering_pb2.UsageEvent:
    event = usage_event(key, when=when, cost="0.0421")
    event.usage.CopyFrom(FULL_USAGE)
    event.price_version = version
    return event


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)) as running:
        yield running


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def fetched(metering: Metering, generation_id: str) -> metering_pb2.UsageEvent:
    request = metering_pb2.GetGenerationRequest(generation_id=generation_id)
    return (await metering.stub.GetGeneration(request)).generation


async def rollup_counts(pool: asyncpg.Pool, key: str) -> dict[str, int]:
    row = await pool.fetchrow(
        f"SELECT sum(requests)::bigint AS requests,"
        f" {', '.join(f'sum({n})::bigint AS {n}' for n in COUNT_FIELDS)}"
        " FROM usage_rollups WHERE key_id = $1",
        key,
    )
    assert row is not None
    return dict(row)


def times(usage: common_pb2.Usage, n: int) -> dict[str, int]:
    return {"requests": n, **{name: getattr(usage, name) * n for name in COUNT_FIELDS}}


async def test_a_full_event_round_trips_through_record_usage_and_counts_once(
    metering: Metering, pool: asyncpg.Pool
) -> None:
    key = new_key_id()
    event = full_event(key)
    request = metering_pb2.RecordUsageRequest(events=[event])
    reply = await metering.router.RecordUsage(request)
    assert (reply.recorded_count, reply.duplicate_count) == (1, 0)
    assert await fetched(metering, event.generation_id) == event
    # Replays change nothing, in the ledger or the rollups.
    for _ in range(3):
        again = await metering.router.RecordUsage(request)
        assert (again.recorded_count, again.duplicate_count) == (0, 1)
    assert await rollup_counts(pool, key) == times(FULL_USAGE, 1)
    second = full_event(key, when=T0 + timedelta(minutes=1), version=0)
    await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[second]))
    assert (await fetched(metering, second.generation_id)).price_version == 0
    assert await rollup_counts(pool, key) == times(FULL_USAGE, 2)
    # QueryUsage keeps answering with the counts its rows carry.
    query = metering_pb2.QueryUsageRequest(key_id=key)
    query.start_time.FromDatetime(T0 - timedelta(hours=1))
    query.end_time.FromDatetime(T0 + timedelta(hours=1))
    usage = await metering.stub.QueryUsage(query)
    assert usage.total_requests == 2
    assert usage.rows[0].cached_tokens == 2 * FULL_USAGE.cached_tokens


async def test_a_full_event_round_trips_through_the_outbox(
    metering: Metering, pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    key = new_key_id()
    event = full_event(key, version=7)
    for _ in range(2):  # and once replayed
        await redis_client.xadd(metering.outbox.stream, {EVENT_FIELD: event.SerializeToString()})

    async def written() -> bool:
        count = await pool.fetchval("SELECT count(*) FROM generations WHERE key_id = $1", key)
        return bool(count) and await redis_client.xlen(metering.outbox.stream) == 0

    await eventually(written)
    assert await fetched(metering, event.generation_id) == event
    assert await rollup_counts(pool, key) == times(FULL_USAGE, 1)


async def test_a_part_outside_its_total_is_refused_by_name(metering: Metering) -> None:
    bad = full_event(new_key_id())
    bad.usage.cache_write_1h_tokens = bad.usage.cache_write_tokens + 1
    negative = full_event(new_key_id())
    negative.price_version = -3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[bad, negative]))
    assert field_violations(caught.value) == [
        "events[0].usage.cache_write_1h_tokens",
        "events[1].price_version",
    ]


# --- migration 0006 on a ledger with rows ------------------------------------------------


async def test_the_migration_applies_to_a_ledger_with_rows(
    own_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The metering migrations before 0006, as an importable package of their own.
    package = f"metering_before_0006_{uuid.uuid4().hex[:8]}"
    before = tmp_path / package
    before.mkdir()
    (before / "__init__.py").write_text("")
    source = Path(migrations.__file__).parent
    for sql in sorted(source.glob("000[1-5]_*.sql")):
        shutil.copy(sql, before / sql.name)
    monkeypatch.syspath_prepend(str(tmp_path))
    pool = await create_pool(own_database_url, min_size=1, max_size=2)
    try:
        await migrate(pool, "metering", package)
        await pool.execute("SELECT generations_partition_for($1)", T0)
        await pool.execute(
            "INSERT INTO generations (generation_id, key_id, account_id, model_id, provider_id,"
            " endpoint_id, upstream_model, prompt_tokens, completion_tokens, cached_tokens,"
            " reasoning_tokens, cache_write_tokens, estimated, cost, finish_reason,"
            " native_finish_reason, status, streamed, created_at, latency_ms, ttft_ms)"
            " VALUES ('gen-old', 'key-old', 'acct', 'm', 'p', 'p:m', 'm', 10, 5, 2, 1, 1, false,"
            " 0.001, 1, 'stop', 1, true, $1, 100, 10)",
            T0,
        )
        await pool.execute(
            "INSERT INTO usage_rollups VALUES ('key-old', 'm', 'p', $1, 1, 10, 5, 2, 1, 1, 0.001)",
            T0,
        )
        assert await migrate(pool, "metering", MIGRATIONS) == [
            "0006_usage_details_and_price_version.sql",
            "0007_swept_generations.sql",
            "0008_rate_limits.sql",
        ]
        ledger = Ledger(
            pool, Partitions(pool, window=EventWindow(clock=lambda: T0 + timedelta(days=1)))
        )
        old = (await ledger.get_generation("gen-old")).generation
        assert old.usage.prompt_tokens == 10 and old.price_version == 0
        assert all(getattr(old.usage, name) == 0 for name in DETAIL_FIELDS)
        assert await reconcile(pool) == []  # the new columns are zeros on both sides
        event = full_event("key-old", when=T0 + timedelta(minutes=5))
        assert (await ledger.record([event], source="rpc")).recorded == 1
        assert (await ledger.get_generation(event.generation_id)).generation == event
        assert await reconcile(pool) == []
        # And the new columns refuse what the old ones did.
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute("UPDATE generations SET web_searches = -1 WHERE key_id = 'key-old'")
    finally:
        await pool.close()


# --- repricing past rows ------------------------------------------------------------------

SHEET = common_pb2.Pricing(
    prompt_usd_per_mtok="1.25",
    completion_usd_per_mtok="10",
    cached_prompt_usd_per_mtok="0.3125",
    cache_write_1h_usd_per_mtok="2.5",
    audio_prompt_usd_per_mtok="3",
    reasoning_usd_per_mtok="12",
    web_search_usd="0.01",
    tiers=[
        common_pb2.PriceTier(
            prompt_tokens_above=200_000, pricing=common_pb2.Pricing(prompt_usd_per_mtok="2.5")
        )
    ],
    windows=[
        common_pb2.PriceWindow(
            start_utc="16:30",
            end_utc="00:30",
            pricing=common_pb2.Pricing(prompt_usd_per_mtok="0.5"),
        )
    ],
)
OLD = common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2")


def book(endpoint: str) -> PriceBook:
    def change(at: datetime, pricing: common_pb2.Pricing, version: int) -> catalog_pb2.PriceChange:
        out = catalog_pb2.PriceChange(pricing=pricing, price_version=version)
        out.effective_time.FromDatetime(at)
        return out

    history = catalog_pb2.EndpointPriceHistory(
        endpoint_id=endpoint,
        changes=[
            change(datetime(1970, 1, 1, tzinfo=UTC), OLD, 11),
            change(T0, SHEET, 12),
        ],
    )
    found = PriceBook.from_proto(catalog_pb2.WatchCatalogResponse(price_history=[history]))
    assert found is not None
    return found


def priced(key: str, endpoint: str, when: datetime, version: int) -> metering_pb2.UsageEvent:
    event = full_event(key, when=when, version=version)
    provider, model = endpoint.split(":", 1)
    event.endpoint_id, event.provider_id, event.model_id = endpoint, provider, model
    pricing = SHEET if when >= T0 else OLD
    cost = PriceSheet.from_proto(pricing).cost(Counts.of(event.usage), at=when)
    event.cost_usd = format_usd(cost)
    return event


async def test_reconcile_reprices_past_rows_with_their_version_or_by_time(
    pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(
        pool, Partitions(pool, window=EventWindow(clock=lambda: T0 + timedelta(days=1)))
    )
    key, endpoint = new_key_id(), f"reprice:m-{uuid.uuid4().hex[:8]}"
    honest = [
        priced(key, endpoint, T0 + timedelta(minutes=5), 12),
        priced(key, endpoint, T0 + timedelta(hours=8), 12),  # off-peak
        priced(key, endpoint, T0 + timedelta(hours=2), 0),  # by time
        priced(key, endpoint, T0 - timedelta(days=2), 11),
    ]
    corrupted = priced(key, endpoint, T0 + timedelta(hours=3), 12)
    unknown_version = priced(key, endpoint, T0 + timedelta(hours=4), 77)
    await ledger.record([*honest, corrupted, unknown_version], source="rpc")
    await pool.execute(
        "UPDATE generations SET cost = cost + 0.000001 WHERE generation_id = $1",
        corrupted.generation_id,
    )
    found = await reprice(pool, book(endpoint))
    # Other tests' rows are on endpoints this book does not have: unpriced, not compared.
    assert found.checked == len(honest) + 1
    assert found.different == 1
    [difference] = found.differences
    assert difference.generation_id == corrupted.generation_id
    assert difference.repriced == PriceSheet.from_proto(SHEET).cost(
        Counts.of(corrupted.usage), at=T0 + timedelta(hours=3)
    )
    assert difference.ledger == difference.repriced + Decimal("0.000001")
    assert difference.price == "price version 12 of 2025-06-01T10:00:00Z"
    assert str(difference).startswith(f"{corrupted.generation_id} attempt 0 2025-06-01T13:00:00Z")
    assert found.unpriced >= 1  # the unknown version
