"""``make bench-ledger`` at a tiny size: every section runs against real Postgres and Redis,
checks the ledger and the budget exactly, and leaves nothing behind."""

from __future__ import annotations

import re

import asyncpg
import pytest

from bench.ledger import Options, run


async def test_a_tiny_run_measures_every_section_and_cleans_up(
    postgres_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = Options(
        events=600, batch=200, consumers=(1,), pairs=60, concurrency=8, accounts=5, checkpoint=False
    )

    assert await run(options, admin_url=postgres_admin_url) == 0

    out = capsys.readouterr().out
    for row in (
        "COPY into bench_plain",
        "Ledger.write: insert + rollup upsert",
        "outbox drain: 1 consumer process, batches of 200",
        "BudgetStore reserve + settle, C=8",
        "RateLimiter acquire + finish",
    ):
        assert row in out
    assert "WRONG" not in out and "all checks passed" in out
    assert "bytes/row of table" in out
    scratch = re.search(r"scratch database (sbledger_\w+)", out)
    assert scratch is not None
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", scratch.group(1)
        )
    finally:
        await conn.close()
    assert left == 0
