"""``python -m tests.chaos``: run the chaos table and print it (``make chaos``).

Postgres and Redis are the machine's (``DATABASE_URL``/``REDIS_URL``, else 127.0.0.1:5432
and 127.0.0.1:6379): the run works in a fresh database it drops at the end and under a Redis
key prefix of its own it deletes at the end. Each row is printed as its scenario ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from switchboard_devstack.storage import create_database, drop_database, find_postgres, find_redis
from tests.chaos.report import HEADER, RULE
from tests.chaos.runner import Rig, Settings, cleanup_redis
from tests.chaos.scenarios import select


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument(
        "--only", action="append", help="run the scenarios whose name contains this (repeatable)"
    )
    parser.add_argument("--fault-seconds", type=float, default=Settings.fault)
    parser.add_argument("--warmup-seconds", type=float, default=Settings.warmup)
    parser.add_argument(
        "--recovery-seconds",
        type=float,
        default=Settings.recovery_max,
        help="the longest the load runs after the fault clears",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=Settings.deadline,
        help="every client call's deadline (caps the longest wait)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--logs", type=Path, help="keep the services' logs here")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    scenarios = select(args.only)
    settings = Settings(
        fault=args.fault_seconds,
        warmup=args.warmup_seconds,
        recovery_max=args.recovery_seconds,
        deadline=args.deadline,
    )
    scratch = Path(tempfile.mkdtemp(prefix="switchboard-chaos-"))
    admin_url, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), scratch / "pg")
    redis_url, embedded_redis = find_redis(os.environ.get("REDIS_URL"), scratch / "redis")
    tag = uuid.uuid4().hex[:10]
    database = f"sbchaos_{tag}"
    database_url = await create_database(admin_url, database)
    prefix = f"sbchaos:{tag}:"
    logs = args.logs or scratch / "logs"
    rig = Rig(database_url, redis_url, prefix, logs, settings)
    lines = [
        f"chaos: {len(scenarios)} scenario(s), fault {settings.fault:g} s, 16 streams"
        f" (8 on a spend-limited key), client deadline {settings.deadline:g} s; logs in {logs}",
        "",
        HEADER,
        RULE,
    ]
    print("\n".join(lines), flush=True)
    began = time.monotonic()
    failures = 0
    try:
        for scenario in scenarios:
            try:
                outcome = await rig.run(scenario)
                row = outcome.row()
                failures += bool(not outcome.ledger.exact or outcome.tracebacks or outcome.exited)
            except Exception as error:  # one broken scenario still leaves the others' rows
                row = f"| {scenario.name} | RUN FAILED: {type(error).__name__}: {error} |"
                failures += 1
            lines.append(row)
            print(row, flush=True)
            if args.out:
                args.out.write_text("\n".join(lines) + "\n")
    finally:
        rig.close()
        await cleanup_redis(redis_url, prefix)
        await drop_database(admin_url, database)
        for embedded in (embedded_pg, embedded_redis):
            if embedded is not None:
                embedded.stop()
    print(f"\n{len(scenarios)} scenario(s) in {time.monotonic() - began:.0f} s", flush=True)
    return 1 if failures else 0


def main() -> int:
    args = parse()
    if args.list:
        for scenario in select(None):
            print(scenario.name)
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
