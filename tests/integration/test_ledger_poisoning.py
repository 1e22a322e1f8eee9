"""The ledger cannot be poisoned: every case of the audit (tests/fakes/poisoned_events.py) is
refused by name before anything is written or any partition created, through ``Ledger.record``
and through the outbox; in the outbox it is dead-lettered, counted and logged as an error, and
the honest events around it are written exactly once with rollups equal to their sums. A row
Postgres still refuses is dead-lettered alone. Real Postgres and Redis.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from switchboard.metering.v1 import metering_pb2
from switchboard_core.db import create_pool, migrate
from switchboard_core.errors import InvalidArgument
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.config import OutboxSettings
from switchboard_metering.event_rules import TOKEN_FIELDS
from switchboard_metering.ledger import Ledger
from switchboard_metering.outbox import OutboxConsumer
from switchboard_metering.partitions import Partitions
from tests.fakes.poisoned_events import CASES, Case
from tests.integration.test_metering_app import eventually, new_key_id, test_settings, usage_event

RollupKey = tuple[str, str, datetime]
Sums = tuple[int, ...]  # requests, the five token counts


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    await migrate(pool, "metering", MIGRATIONS)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=redis_prefix + "poison*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(scope="module")
async def outbox(
    pool: asyncpg.Pool, client: redis.Redis, redis_prefix: str
) -> AsyncIterator[OutboxSettings]:
    """One consumer for the module, small batches so poison lands mid-batch."""
    settings = test_settings(f"{redis_prefix}poison:", batch_size=7)
    consumer = OutboxConsumer(client, Ledger(pool), settings)
    consumer.start()
    yield settings
    await consumer.stop()


async def partitions_of(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'generations'::regclass"
    )
    return {row["relname"] for row in rows}


async def ledger_rows(pool: asyncpg.Pool, key: str) -> list[str]:
    rows = await pool.fetch("SELECT generation_id FROM generations WHERE key_id = $1", key)
    return sorted(row["generation_id"] for row in rows)


async def rollups(pool: asyncpg.Pool, key: str) -> dict[RollupKey, tuple[Sums, Decimal]]:
    rows = await pool.fetch(
        f"SELECT model_id, provider_id, bucket_start, requests, {', '.join(TOKEN_FIELDS)}, cost"
        " FROM usage_rollups WHERE key_id = $1",
        key,
    )
    return {
        (r["model_id"], r["provider_id"], r["bucket_start"]): (
            (r["requests"], *(r[name] for name in TOKEN_FIELDS)),
            r["cost"],
        )
        for r in rows
    }


def expected_rollups(
    events: list[metering_pb2.UsageEvent],
) -> dict[RollupKey, tuple[Sums, Decimal]]:
    sums: dict[RollupKey, tuple[Sums, Decimal]] = {}
    for event in events:
        hour = event.create_time.ToDatetime(tzinfo=UTC).replace(minute=0, second=0, microsecond=0)
        cell = (event.model_id, event.provider_id, hour)
        counts, cost = sums.get(cell, ((0,) * 6, Decimal(0)))
        row = (1, *(getattr(event.usage, name) for name in TOKEN_FIELDS))
        sums[cell] = (
            tuple(a + b for a, b in zip(counts, row, strict=True)),
            cost + Decimal(event.cost_usd),
        )
    return sums


def honest(key: str, index: int) -> metering_pb2.UsageEvent:
    return usage_event(
        key,
        model=("demo/echo", "demo/other")[index % 2],
        prompt=10 + index,
        completion=5 + index % 7,
        cost=f"0.00{index % 10}1",
    )


def dead_lettered(reason: str, field: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchboard_usage_events_dead_lettered_total", {"reason": reason, "field": field}
    )
    return value or 0.0


async def drained(client: redis.Redis, outbox: OutboxSettings) -> bool:
    pending = await client.xpending(outbox.stream, outbox.group)
    return pending["pending"] == 0 and await client.xlen(outbox.stream) == 0


# --- through Ledger.record ---------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_record_refuses_a_poisoned_event_by_name_and_writes_nothing(
    pool: asyncpg.Pool, case: Case
) -> None:
    key = new_key_id()
    before = await partitions_of(pool)
    batch = [honest(key, 0), honest(key, 1), honest(key, 2), case.apply(honest(key, 3))]
    with pytest.raises(InvalidArgument) as caught:
        await Ledger(pool).record(batch, source="rpc")
    assert [name for name, _ in caught.value.violations] == [f"events[3].{case.field}"]
    assert await ledger_rows(pool, key) == []
    assert await rollups(pool, key) == {}
    assert await partitions_of(pool) == before


@pytest.mark.parametrize("bad", ["gen\x00", "gen\n", "g" * 257])
async def test_lookups_refuse_strings_postgres_cannot_take(pool: asyncpg.Pool, bad: str) -> None:
    ledger = Ledger(pool)
    with pytest.raises(InvalidArgument) as caught:
        await ledger.get_generation(bad)
    assert [name for name, _ in caught.value.violations] == ["generation_id"]
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(InvalidArgument) as caught:
        await ledger.query_usage(bad, start, end, "day")
    assert [name for name, _ in caught.value.violations] == ["key_id"]
    with pytest.raises(InvalidArgument) as caught:
        await ledger.query_usage("", start, end, "day", account_id=bad)
    assert [name for name, _ in caught.value.violations] == ["account_id"]


async def test_partitions_are_never_created_outside_the_window(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    before = await partitions_of(pool)
    far = [datetime(1, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]
    far += [datetime(2999, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)]
    with caplog.at_level(logging.ERROR, logger="switchboard_metering.partitions"):
        await Partitions(pool).ensure(far)
    assert await partitions_of(pool) == before
    assert "outside the accepted window" in caplog.text


# --- through the outbox ------------------------------------------------------------------


async def test_the_outbox_dead_letters_each_poisoned_event_and_writes_the_rest_once(
    pool: asyncpg.Pool,
    client: redis.Redis,
    outbox: OutboxSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = new_key_id()
    good: list[metering_pb2.UsageEvent] = []
    poisoned: dict[bytes, Case] = {}
    counted = Tally(case.field for case in CASES)
    metric_before = {field: dead_lettered("invalid", field) for field in counted}
    dead_before = await client.xlen(outbox.dead_letter_stream)
    partitions_before = await partitions_of(pool)
    with caplog.at_level(logging.ERROR, logger="switchboard_metering.outbox"):
        for index, case in enumerate(CASES):  # honest before and after every poisoned one
            for event in (honest(key, 2 * index), honest(key, 2 * index + 1)):
                good.append(event)
                await client.xadd(outbox.stream, {EVENT_FIELD: event.SerializeToString()})
            entry: Any = await client.xadd(
                outbox.stream,
                {EVENT_FIELD: case.apply(honest(key, 1000 + index)).SerializeToString()},
            )
            poisoned[entry] = case
        for event in good[:5]:  # replays change nothing
            await client.xadd(outbox.stream, {EVENT_FIELD: event.SerializeToString()})

        async def done() -> bool:
            return len(await ledger_rows(pool, key)) == len(good) and await drained(client, outbox)

        await eventually(done)
    assert await ledger_rows(pool, key) == sorted(e.generation_id for e in good)
    assert await rollups(pool, key) == expected_rollups(good)
    assert await partitions_of(pool) == partitions_before

    dead: Any = await client.xrange(outbox.dead_letter_stream)
    dead = dead[dead_before:]
    assert {fields[b"id"]: fields[b"reason"].decode() for _, fields in dead} == {
        entry: f"invalid event.{case.field}" for entry, case in poisoned.items()
    }
    for field, count in counted.items():
        assert dead_lettered("invalid", field) == metric_before[field] + count
    # An error per entry, naming it and the field, never what the entry held.
    logged = {
        record.entry_id.encode(): record  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "usage outbox: entry moved to the dead-letter stream"
    }
    assert set(logged) == set(poisoned)
    for entry, case in poisoned.items():
        record = logged[entry]
        assert record.levelno == logging.ERROR
        assert case.field in record.why  # type: ignore[attr-defined]
        assert key not in str(record.__dict__)
        assert "\\x00" not in str(record.__dict__)


async def test_a_row_postgres_refuses_is_dead_lettered_alone(
    pool: asyncpg.Pool, client: redis.Redis, outbox: OutboxSettings
) -> None:
    """A rollup cell that cannot take one more event (filled behind the ledger's back, as no
    bounded event could) fails its batch: the batch is written event by event, the refused
    one goes to the dead letters and the honest ones before and after it are written."""
    key, victim = new_key_id(), new_key_id()
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO usage_rollups VALUES ($1, 'demo/echo', 'demo', $2, 1, $3, 0, 0, 0, 0, 0)",
        victim,
        now.replace(minute=0, second=0, microsecond=0),
        2**63 - 5,
    )
    refused_before = dead_lettered("refused", "")
    good = [honest(key, i) for i in range(6)]
    doomed = usage_event(victim, when=now)
    for event in (*good[:3], doomed, *good[3:]):
        await client.xadd(outbox.stream, {EVENT_FIELD: event.SerializeToString()})

    async def done() -> bool:
        return len(await ledger_rows(pool, key)) == 6 and await drained(client, outbox)

    await eventually(done)
    assert await rollups(pool, key) == expected_rollups(good)
    assert await ledger_rows(pool, victim) == []
    assert dead_lettered("refused", "") == refused_before + 1
    newest: Any = await client.xrevrange(outbox.dead_letter_stream, count=1)
    [(_, last)] = newest
    assert last[b"reason"] == b"refused by Postgres (22003)"  # numeric value out of range
    assert last[EVENT_FIELD] == doomed.SerializeToString()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(st.integers(min_value=0, max_value=10_000), st.sampled_from(CASES)),
        min_size=1,
        max_size=25,
    )
)
async def test_any_mix_leaves_exactly_the_honest_events(
    pool: asyncpg.Pool,
    client: redis.Redis,
    outbox: OutboxSettings,
    mix: list[int | Case],
) -> None:
    key = new_key_id()
    good: list[metering_pb2.UsageEvent] = []
    dead_before = await client.xlen(outbox.dead_letter_stream)
    for index, item in enumerate(mix):
        event = honest(key, index)
        if isinstance(item, Case):
            event = item.apply(event)
        else:
            event.usage.prompt_tokens += item
            good.append(event)
        await client.xadd(outbox.stream, {EVENT_FIELD: event.SerializeToString()})
    poisoned = len(mix) - len(good)

    async def done() -> bool:
        dead = await client.xlen(outbox.dead_letter_stream) - dead_before
        written = len(await ledger_rows(pool, key))
        return dead == poisoned and written == len(good) and await drained(client, outbox)

    await eventually(done)
    assert await ledger_rows(pool, key) == sorted(e.generation_id for e in good)
    assert await rollups(pool, key) == expected_rollups(good)
