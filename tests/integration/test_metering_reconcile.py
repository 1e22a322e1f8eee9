"""Reconcile recomputes the rollups from the ledger: none after normal writes, every corrupted,
missing or extra cell named, and --fix repairs them (in its own database)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from switchboard_core.db import create_pool, migrate
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.event_rules import EventWindow
from switchboard_metering.ledger import Ledger
from switchboard_metering.partitions import Partitions
from switchboard_metering.reconcile import reconcile
from tests.integration.test_metering_app import usage_event

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
async def pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_database_url)
    await migrate(pool, "metering", MIGRATIONS)
    yield pool
    await pool.close()


async def test_reconcile_finds_nothing_after_normal_writes_and_every_corruption(
    pool: asyncpg.Pool, own_database_url: str
) -> None:
    # The ledger's clock on the day of the events, so that they are inside its window.
    ledger = Ledger(
        pool, Partitions(pool, window=EventWindow(clock=lambda: T0 + timedelta(days=1)))
    )
    events = [
        usage_event(key, when=T0 + timedelta(minutes=40 * i), cost=f"0.00{i + 1}", prompt=i + 1)
        for i in range(6)
        for key in ("key-a", "key-b")
    ]
    await ledger.record(events, source="rpc")
    await ledger.record(events[::-1], source="rpc")  # a replay changes nothing
    assert await reconcile(pool) == []

    await pool.execute(
        "UPDATE usage_rollups SET cost = cost + 0.000001, requests = requests + 1"
        " WHERE key_id = 'key-a' AND bucket_start = $1",
        T0,
    )
    await pool.execute("DELETE FROM usage_rollups WHERE key_id = 'key-b' AND bucket_start = $1", T0)
    await pool.execute(
        "INSERT INTO usage_rollups VALUES ('ghost', 'm', 'p', $1, 1, 1, 1, 0, 0, 0, 1)", T0
    )
    found = await reconcile(pool)
    cells = {(d.key_id, d.column): (d.ledger, d.rollup) for d in found}
    assert cells[("key-a", "requests")] == (2, 3)
    assert cells[("key-a", "cost")] == (Decimal("0.003"), Decimal("0.003001"))
    assert cells[("key-b", "requests")] == (2, None)
    assert cells[("ghost", "requests")] == (None, 1)
    assert str(found[0]) == "ghost m p 2025-06-01T10 requests: ledger None != rollup 1"

    command = [sys.executable, "-m", "switchboard_metering", "reconcile"]
    env = {"DATABASE_URL": own_database_url, "REDIS_URL": "redis://127.0.0.1:1", "PATH": "/usr/bin"}
    checked = await asyncio.to_thread(run, command, env)
    assert checked.returncode == 1, checked.stderr
    assert f"{len(found)} differences found" in checked.stdout

    fixed = await asyncio.to_thread(run, [*command, "--fix"], env)
    assert fixed.returncode == 0, fixed.stderr
    assert await reconcile(pool) == []
