"""``make bench-ledger``: the per-core figures of the usage path that docs/SCALING.md builds on.

Three sections, each next to a floor measured in the same run, with the real metering, budget
and rate-limit code, against a scratch database (created and dropped here, with the metering
migrations) on the Postgres found as the other benches find it (DATABASE_URL, else local, else
embedded), and against private ``redis-server`` processes started here (the machine's binary,
else the embedded one), so that Redis's ``INFO cpu`` counts this run alone:

1. Postgres ledger writes at the outbox consumer's batch size (:mod:`bench.ledger_postgres`):
   ``COPY`` and bare ``INSERT ... VALUES`` floors, the ledger's insert alone, ``Ledger.write``
   (insert and rollup upsert), and the ledger's bytes per row on disk.
2. Outbox consumers (:mod:`bench.ledger_outbox`): ``--consumers`` real ``OutboxConsumer``
   processes, one group, drain a stream on a Redis with ``appendfsync always`` (as
   docker-compose.yml runs it) into the ledger, checked exactly; one drain per value given.
3. Budget reservations and rate limits (:mod:`bench.ledger_redis`): reserve + settle and
   acquire + finish pairs on one Redis, without persistence and with ``appendfsync always``
   (and on ``--redis URL`` when given), against two no-op scripts; spend checked exactly.

CPU is read per party: this process or the consumer processes (psutil), this database's Postgres
backends (psutil, when Postgres is local) and the Redis in use. "CPU µs per unit" is per event or
per pair; ``1e6 / µs`` is the most one core of that party can do, which is what the capacity
plan extrapolates from. Everything shares this machine's cores: wall-clock rates are floors.
About 1.5-2 minutes at the defaults; ``--timeout`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from bench.ingest import LocalRedis
from bench.ledger_outbox import consumers_section
from bench.ledger_postgres import postgres_writes
from bench.ledger_redis import budget_section, redis_server
from switchboard_core.db import create_pool, migrate
from switchboard_devstack.storage import create_database, drop_database, find_postgres
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.config import OutboxSettings

SECTIONS = ("postgres", "outbox", "budget")


@dataclass(frozen=True)
class Options:
    """What one run measures (the command line's flags)."""

    events: int = 30_000
    batch: int = OutboxSettings().batch_size
    consumers: tuple[int, ...] = (1, 2)
    pairs: int = 20_000
    concurrency: int = 64
    accounts: int = 250
    timeout: float = 240.0
    redis: str = ""  # also the budget rows on this Redis
    sections: tuple[str, ...] = SECTIONS
    checkpoint: bool = True  # a CHECKPOINT before each timed Postgres run (slow; tests skip it)


async def run(options: Options, admin_url: str | None = None) -> int:
    """Every section on a scratch database and private Redis servers; 0 when all checks pass."""
    state = Path(tempfile.mkdtemp(prefix="sbledger-"))
    admin, embedded_pg = find_postgres(admin_url or os.environ.get("DATABASE_URL"), state / "pg")
    name = f"sbledger_{uuid.uuid4().hex[:8]}"
    database = await create_database(admin, name)
    servers: list[LocalRedis] = []
    pool: asyncpg.Pool | None = None
    ok = False
    try:
        async with asyncio.timeout(options.timeout):
            durable = redis_server(state / "aof", durable=True)
            servers.append(durable)
            plain = redis_server(state / "plain", durable=False)
            servers.append(plain)
            pool = await create_pool(database, max_size=4)
            await migrate(pool, "metering", MIGRATIONS)
            print(
                f"{psutil.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other work"
                " on the machine skews wall-clock rates; CPU per unit less so)\n"
                f"postgres {await pool.fetchval('SHOW server_version')} (synchronous_commit "
                f"{await pool.fetchval('SHOW synchronous_commit')}), scratch database {name};"
                f" redis-server {durable.binary}",
                flush=True,
            )
            ok = True
            if "postgres" in options.sections:
                ok &= await postgres_writes(pool, options.events, options.batch, options.checkpoint)
            if "outbox" in options.sections:
                ok &= await consumers_section(
                    pool,
                    database,
                    durable,
                    events=options.events,
                    levels=options.consumers,
                    batch=options.batch,
                    checkpoint=options.checkpoint,
                )
            targets = [(plain.url, "no persistence"), (durable.url, "appendfsync always")]
            if options.redis:
                targets.append((options.redis, f"given ({options.redis})"))
            for url, label in targets if "budget" in options.sections else []:
                ok &= await budget_section(
                    url, label, options.pairs, options.concurrency, options.accounts
                )
    finally:
        if pool is not None:
            await pool.close()
        for server in servers:
            server.stop()
        await drop_database(admin, name)
        if embedded_pg is not None:
            embedded_pg.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print("all checks passed" if ok else "FAILED: see the checks above")
    return 0 if ok else 1


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], or an error naming the bounds."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    defaults = Options()
    parser.add_argument("--events", type=bounded(100, 1_000_000), default=defaults.events)
    parser.add_argument(
        "--batch-size",
        type=bounded(1, 10_000),
        default=defaults.batch,
        help="events per ledger write (the outbox's XREADGROUP count)",
    )
    parser.add_argument(
        "--consumers",
        type=bounded(1, 8),
        nargs="+",
        default=list(defaults.consumers),
        help="consumer processes, one drain per value",
    )
    parser.add_argument("--pairs", type=bounded(10, 1_000_000), default=defaults.pairs)
    parser.add_argument("--concurrency", type=bounded(1, 1024), default=defaults.concurrency)
    parser.add_argument("--accounts", type=bounded(1, 100_000), default=defaults.accounts)
    parser.add_argument(
        "--timeout", type=bounded(10, 3600), default=int(defaults.timeout), help="seconds"
    )
    parser.add_argument(
        "--redis",
        default="",
        help="also run the budget rows on this Redis URL (shared: its CPU counts every client's)",
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run"
    )
    args = parser.parse_args()
    options = Options(
        events=args.events,
        batch=args.batch_size,
        consumers=tuple(args.consumers),
        pairs=args.pairs,
        concurrency=args.concurrency,
        accounts=args.accounts,
        timeout=float(args.timeout),
        redis=args.redis,
        sections=tuple(args.sections),
    )
    return asyncio.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
