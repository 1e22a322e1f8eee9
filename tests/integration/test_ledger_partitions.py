"""The ledger partitioned by month: the migration moves existing rows, writes create missing
partitions, retention drops whole months while rollups keep them, and a replay of a dropped
event changes nothing (each test in its own database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources

import asyncpg
import pytest

from switchboard_core.db import create_pool, migrate
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.event_rules import EventWindow
from switchboard_metering.ledger import Ledger
from switchboard_metering.partitions import Partitions
from switchboard_metering.reconcile import duplicates, reconcile
from tests.integration.test_metering_app import new_key_id, usage_event

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_database_url)
    yield pool
    await pool.close()


def at(pool: asyncpg.Pool, now: datetime, retention: timedelta | None = None) -> Partitions:
    """Partitions (and so a ledger) whose clock says ``now``: the events are in its window."""
    return Partitions(pool, retention, EventWindow(clock=lambda: now))


async def partitions_of(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'generations'::regclass ORDER BY 1"
    )
    return [row["relname"] for row in rows]


async def spend(pool: asyncpg.Pool, key: str) -> tuple[int, Decimal]:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(requests), 0)::bigint AS n, coalesce(sum(cost), 0) AS cost"
        " FROM usage_rollups WHERE key_id = $1",
        key,
    )
    assert row is not None
    return row["n"], row["cost"]


async def test_migration_moves_existing_rows_into_monthly_partitions(pool: asyncpg.Pool) -> None:
    files = sorted(
        (entry for entry in resources.files(MIGRATIONS).iterdir()),
        key=lambda entry: entry.name,
    )
    files = [entry for entry in files if entry.name.endswith(".sql") and entry.name < "0003"]
    for entry in files:  # the schema as it was before partitioning
        await pool.execute(entry.read_text())
    old = [
        ("gen-a", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("gen-b", datetime(2026, 1, 1, 0, 0, tzinfo=UTC)),
        ("gen-c", datetime(2026, 3, 15, 8, 0, tzinfo=UTC)),
    ]
    for generation_id, created in old:
        await pool.execute(
            "INSERT INTO generations VALUES ($1, 'key_old', 'acct', 'm', 'p', 'p:m', 'm',"
            " 10, 5, 0, 0, 0, false, 0.5, 1, 'stop', 1, true, $2, 1000, 100)",
            generation_id,
            created,
        )
    latest = resources.files(MIGRATIONS).joinpath("0003_partitioned_generations.sql")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(latest.read_text())

    names = await partitions_of(pool)
    assert {"generations_2025_12", "generations_2026_01", "generations_2026_03"} <= set(names)
    rows = await pool.fetch(
        "SELECT tableoid::regclass::text AS part, generation_id, attempt, tokens_per_second"
        " FROM generations ORDER BY generation_id"
    )
    assert [(r["part"], r["generation_id"], r["attempt"]) for r in rows] == [
        ("generations_2025_12", "gen-a", 0),
        ("generations_2026_01", "gen-b", 0),
        ("generations_2026_03", "gen-c", 0),
    ]
    # 5 completion tokens over the 900 ms after the first token.
    assert rows[0]["tokens_per_second"] == pytest.approx(5 / 0.9)


async def test_retention_drops_whole_months_and_replays_of_them_change_nothing(
    pool: asyncpg.Pool,
) -> None:
    await migrate(pool, "metering", MIGRATIONS)
    partitions = at(pool, NOW, retention=timedelta(days=60))
    ledger = Ledger(pool, partitions)
    key = new_key_id()
    dates = [
        datetime(2026, 7, 10, tzinfo=UTC),  # dropped: July ends before Sept 21
        datetime(2026, 8, 31, 23, tzinfo=UTC),  # dropped
        datetime(2026, 9, 1, 1, tzinfo=UTC),  # kept: September holds the horizon
        NOW,
    ]
    events = [usage_event(key, when=when, cost="0.25") for when in dates]
    assert (await ledger.record(events, source="rpc")).recorded == 4

    done = await partitions.maintain(NOW)

    assert done.dropped == ["generations_2026_07", "generations_2026_08"]
    assert done.retained_from == datetime(2026, 9, 1, tzinfo=UTC)
    assert "generations_2026_12" in await partitions_of(pool)  # next month made ahead
    left = await pool.fetch("SELECT generation_id FROM generations WHERE key_id = $1", key)
    assert {r["generation_id"] for r in left} == {e.generation_id for e in events[2:]}
    # Rollups keep every month: usage and spend do not shrink with retention.
    assert await spend(pool, key) == (4, Decimal("1.00"))
    assert await reconcile(pool) == []

    replay = await ledger.record(events, source="outbox")

    assert (replay.recorded, replay.duplicates, replay.expired) == (0, 2, 2)
    assert await spend(pool, key) == (4, Decimal("1.00"))
    assert await reconcile(pool) == []
    # Maintenance is idempotent.
    again = await partitions.maintain(NOW)
    assert (again.created, again.dropped) == ([], [])


async def test_a_write_creates_its_partition_even_after_someone_dropped_it(
    pool: asyncpg.Pool,
) -> None:
    await migrate(pool, "metering", MIGRATIONS)
    far = datetime(2031, 1, 5, tzinfo=UTC)
    ledger = Ledger(pool, at(pool, far))
    key = new_key_id()
    assert (await ledger.record([usage_event(key, when=far)], source="rpc")).recorded == 1
    await pool.execute("DROP TABLE generations_2031_01")  # the ledger still believes in it

    result = await ledger.record([usage_event(key, when=far)], source="rpc")

    assert result.recorded == 1
    assert "generations_2031_01" in await partitions_of(pool)


async def test_concurrent_writers_create_the_same_partition_once(pool: asyncpg.Pool) -> None:
    await migrate(pool, "metering", MIGRATIONS)
    when = datetime(2032, 2, 2, tzinfo=UTC)
    ledgers = [Ledger(pool, at(pool, when)) for _ in range(4)]
    key = new_key_id()
    results = await asyncio.gather(
        *(ledger.record([usage_event(key, when=when)], source="rpc") for ledger in ledgers)
    )
    assert sum(result.recorded for result in results) == 4
    assert (await partitions_of(pool)).count("generations_2032_02") == 1


async def test_attempts_are_separate_rows_and_a_redated_copy_is_reported(
    pool: asyncpg.Pool,
) -> None:
    await migrate(pool, "metering", MIGRATIONS)
    ledger = Ledger(pool, at(pool, NOW))
    key = new_key_id()
    first = usage_event(key, when=NOW)
    fallback = usage_event(key, first.generation_id, when=NOW)
    fallback.attempt = 1
    assert (await ledger.record([first, fallback, first], source="rpc")).recorded == 2
    assert await duplicates(pool) == []
    got = await ledger.get_generation(first.generation_id)
    assert got.generation.attempt == 1
    assert got.tokens_per_second == pytest.approx(5 / 1.05)

    # The key includes create_time: a copy dated differently is a second row, and only
    # reconcile can see it. The router never re-dates an event; this guards against a bug.
    redated = usage_event(key, first.generation_id, when=NOW + timedelta(seconds=1))
    assert (await ledger.record([redated], source="rpc")).recorded == 1
    [twice] = await duplicates(pool)
    assert (twice.generation_id, twice.attempt, twice.copies) == (first.generation_id, 0, 2)
