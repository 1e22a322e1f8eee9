"""``make bench-ledger`` section 1: Postgres ledger writes at the consumer's batch size.

On the same pre-built rows, one statement per batch, each on an emptied table: ``COPY`` and a
bare ``INSERT ... VALUES`` into ``bench_plain`` (``LIKE generations INCLUDING DEFAULTS``: no
key, index, CHECK or partitioning), the floors; the ledger's own insert alone (``unnest`` of the
column arrays, ``ON CONFLICT DO NOTHING`` into the partitioned, indexed ``generations``), no
rollups; and ``Ledger.write``, the statement the consumer runs: that insert plus the retention
horizon and the ``usage_rollups`` upsert. The difference of the last two is what the rollups
cost. ``Ledger.prepare`` (the Python half, overlapped with the previous write in the consumer)
is timed apart, and the ledger's size on disk per row is read from the catalog.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from bench.ingest import COLUMN_NAMES, Cpu, check_ledger, make_events, total_cost
from bench.ledger_figures import HEADER, Figure, cpu_parts
from switchboard_metering import ledger as ledger_module
from switchboard_metering.ledger import Batch, Ledger

MAX_PARAMS = 32_767  # bind parameters one Postgres statement may carry
# The ledger's insert without the rollups: what Ledger.write adds over this is the rollups.
INSERT_ONLY_SQL = f"""
INSERT INTO generations ({ledger_module._NAMES})
SELECT {ledger_module._NAMES} FROM unnest({ledger_module._ARRAYS}) AS e({ledger_module._NAMES})
ORDER BY {ledger_module._KEY}
ON CONFLICT ({ledger_module._KEY}) DO NOTHING
"""
SIZES_SQL = """
SELECT sum(pg_table_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS index
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'generations'::regclass
"""


def plain_insert_sql(rows: int) -> str:
    """``INSERT INTO bench_plain (...) VALUES (...), ...`` for ``rows`` rows."""
    width = len(COLUMN_NAMES)
    values = ", ".join(
        "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(rows)
    )
    return f"INSERT INTO bench_plain ({', '.join(COLUMN_NAMES)}) VALUES {values}"


async def checkpoint(pool: asyncpg.Pool, wanted: bool) -> None:
    """Write out the dirty pages, so that one run's do not land on the next run's time."""
    if wanted:
        with contextlib.suppress(asyncpg.PostgresError):  # needs superuser or pg_checkpoint
            await pool.execute("CHECKPOINT")


async def empty_ledger(pool: asyncpg.Pool, wanted: bool) -> None:
    await pool.execute("TRUNCATE generations, usage_rollups")
    await checkpoint(pool, wanted)


async def timed_statements(
    pool: asyncpg.Pool, name: str, count: int, run: Callable[[], Awaitable[None]], wanted: bool
) -> Figure:
    await checkpoint(pool, wanted)
    before = await Cpu.sample(pool, None)
    started = time.perf_counter()
    await run()
    seconds = time.perf_counter() - started
    return Figure(name, count, seconds, cpu_parts(before, await Cpu.sample(pool, None)))


@dataclass
class WriteInputs:
    """The same events as the ledger's rows, its prepared batches and their bare VALUES."""

    count: int
    batch: int
    cost: Decimal
    rows: list[tuple[Any, ...]]
    batches: list[Batch]
    spread: list[Batch]  # the same events, each of its own key: a rollup row per event
    prepare_us: float  # Ledger.prepare, CPU µs per event of this process
    cells: float  # distinct (key, model, provider) per batch: the rollup rows it touches
    checkpoint: bool  # a CHECKPOINT before each timed run

    @classmethod
    def make(cls, ledger: Ledger, count: int, batch: int, checkpoint: bool) -> WriteInputs:
        events = make_events(count)
        started = time.process_time()
        batches = [ledger.prepare(events[i : i + batch]) for i in range(0, count, batch)]
        prepare_us = (time.process_time() - started) * 1e6 / count
        cells = sum(
            len({(e.key_id, e.model_id, e.provider_id) for e in events[i : i + batch]})
            for i in range(0, count, batch)
        )
        rows = [ledger_module._row(event) for event in events]
        for i, event in enumerate(events):
            event.key_id = f"key-spread{i:07d}"
        spread = [ledger.prepare(events[i : i + batch]) for i in range(0, count, batch)]
        return cls(
            count,
            batch,
            total_cost(events),
            rows,
            batches,
            spread,
            prepare_us,
            cells / len(batches),
            checkpoint,
        )


async def plain_floors(pool: asyncpg.Pool, inputs: WriteInputs) -> list[Figure]:
    """COPY, then bare ``INSERT ... VALUES``, of the rows into an unindexed ``bench_plain``."""
    count, rows = inputs.count, inputs.rows
    per_statement = min(inputs.batch, MAX_PARAMS // len(COLUMN_NAMES))

    async def copy() -> None:
        async with pool.acquire() as conn:
            for i in range(0, count, inputs.batch):
                chunk = rows[i : i + inputs.batch]
                await conn.copy_records_to_table("bench_plain", records=chunk, columns=COLUMN_NAMES)

    async def values() -> None:
        async with pool.acquire() as conn:
            for i in range(0, count, per_statement):
                chunk = rows[i : i + per_statement]
                await conn.execute(plain_insert_sql(len(chunk)), *(v for r in chunk for v in r))

    figures = []
    await pool.execute("CREATE TABLE bench_plain (LIKE generations INCLUDING DEFAULTS)")
    try:
        for name, run in (
            (f"COPY into bench_plain, {inputs.batch} rows/COPY", copy),
            (f"bare INSERT ... VALUES, {per_statement} rows/statement", values),
        ):
            figure = await timed_statements(pool, name, count, run, inputs.checkpoint)
            stored = await pool.fetchval("SELECT count(*) FROM bench_plain")
            figure.check = f"{'exact' if stored == count else 'WRONG'}: {stored} rows"
            await pool.execute("TRUNCATE bench_plain")
            figures.append(figure)
    finally:
        await pool.execute("DROP TABLE bench_plain")
    return figures


async def postgres_writes(pool: asyncpg.Pool, count: int, batch: int, checkpoint: bool) -> bool:
    """Section 1, printed; False when a check failed."""
    ledger = Ledger(pool)
    inputs = WriteInputs.make(ledger, count, batch, checkpoint)
    await ledger.partitions.ensure(set().union(*(b.months for b in inputs.batches)))

    async def insert_only() -> None:
        for one in inputs.batches:
            await pool.execute(INSERT_ONLY_SQL, *one.columns)

    async def ledger_write() -> None:
        for one in inputs.batches:
            await ledger.write(one, source="rpc")

    async def spread_write() -> None:
        for one in inputs.spread:
            await ledger.write(one, source="rpc")

    print(f"\n1. Postgres ledger writes: {count:,} events, batches of {batch}\n{HEADER}")
    figures = await plain_floors(pool, inputs)
    floor = figures[0]
    await empty_ledger(pool, False)
    only = await timed_statements(
        pool, "ledger insert, ON CONFLICT, no rollups", count, insert_only, inputs.checkpoint
    )
    stored = await pool.fetchval("SELECT count(*) FROM generations")
    only.check = f"{'exact' if stored == count else 'WRONG'}: {stored} rows"
    await empty_ledger(pool, False)
    full = await timed_statements(
        pool, "Ledger.write: insert + rollup upsert", count, ledger_write, inputs.checkpoint
    )
    ok, full.check = await check_ledger(pool, count, inputs.cost)
    disk = await disk_note(pool, count)
    await empty_ledger(pool, False)
    spread = await timed_statements(
        pool, "Ledger.write, a rollup row per event", count, spread_write, inputs.checkpoint
    )
    spread_ok, spread.check = await check_ledger(pool, count, inputs.cost)
    figures += [only, full, spread]
    for figure in figures:
        print(figure.row(None if figure is floor else floor))
    for figure in figures:
        print(f"    {figure.name}: {figure.check}")
        ok &= not figure.check.startswith("WRONG")
    print(f"{disk}\n{rollup_note(inputs, only, full, spread)}")
    return ok and spread_ok


async def disk_note(pool: asyncpg.Pool, count: int) -> str:
    """The ledger's bytes per row on disk (table, indexes), read from the catalog."""
    sizes = await pool.fetchrow(SIZES_SQL)
    heap, index = (int(sizes[name] or 0) / count for name in ("heap", "index"))
    rollups = await pool.fetchval("SELECT count(*) FROM usage_rollups")
    return (
        f"    on disk: {heap:.0f} bytes/row of table and {index:.0f} of indexes in generations"
        f" ({heap + index:.0f} in all, before any bloat); {rollups} rollup rows"
    )


def rollup_note(inputs: WriteInputs, only: Figure, full: Figure, spread: Figure) -> str:
    """What the rollup upsert adds to the insert, per batch and in Postgres CPU per event."""
    batches = len(inputs.batches)
    base_ms, base_pg = only.seconds * 1000 / batches, only.per_unit("postgres")
    parts = []
    for figure, cells in ((full, f"{inputs.cells:.0f}"), (spread, str(inputs.batch))):
        pg = figure.per_unit("postgres")
        added = f"{pg - base_pg:.1f}" if pg is not None and base_pg is not None else "-"
        parts.append(
            f"{figure.seconds * 1000 / batches - base_ms:.1f} ms and {added} Postgres CPU"
            f" µs/event with {cells} rollup rows per batch"
        )
    return (
        f"    the rollup upsert adds to the insert ({base_ms:.1f} ms per batch of"
        f" {inputs.batch}): {'; '.join(parts)}\n"
        f"    Ledger.prepare (Python CPU, in the consumer, overlapped): {inputs.prepare_us:.1f}"
        " µs/event"
    )
