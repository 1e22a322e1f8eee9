"""The Kubernetes migration Job's script, and the dashboard's ledger queries, on real Postgres.

deploy/kubernetes/base/migrate.py runs as its own process (as in the Job) against a fresh
database: it applies every service's migrations, a second run applies none, and the services
then find nothing left to do. The Grafana dashboard's SQL panels run against that schema
with Grafana's macros expanded, and add up what was written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg

from switchboard_core.db import create_pool, migrate

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/kubernetes/base/migrate.py"
DASHBOARD = ROOT / "deploy/grafana/dashboards/switchboard.json"
ROLLUP_COLUMNS = (
    "key_id",
    "model_id",
    "provider_id",
    "bucket_start",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost",
)
MIGRATIONS = {
    "catalog": ROOT / "services/catalog/switchboard_catalog/migrations",
    "metering": ROOT / "services/metering/switchboard_metering/migrations",
}


def run_job(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )


def grafana_sql(raw: str) -> str:
    """Grafana's macros as Postgres SQL, over the last day."""
    raw = re.sub(r"\$__timeGroupAlias\((\w+),\s*'1h'\)", r"date_trunc('hour', \1) AS time", raw)
    return re.sub(r"\$__timeFilter\((\w+)\)", r"\1 > now() - interval '1 day'", raw)


def sql_panels() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        panel["title"]: target["rawSql"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "rawSql" in target
    }


async def test_the_job_migrates_every_service_once(own_database_url: str) -> None:
    first = run_job(own_database_url)
    assert first.returncode == 0, first.stderr
    conn = await asyncpg.connect(own_database_url)
    try:
        rows = await conn.fetch("SELECT service, name FROM schema_migrations")
    finally:
        await conn.close()
    applied: dict[str, set[str]] = {}
    for row in rows:
        applied.setdefault(row["service"], set()).add(row["name"])
    for service, folder in MIGRATIONS.items():
        assert applied.pop(service) == {path.name for path in folder.glob("[0-9]*.sql")}
    assert len(applied) == 1  # the shared audit log's own
    assert f'"applied": {len(rows)}' in first.stderr

    second = run_job(own_database_url)
    assert second.returncode == 0, second.stderr
    assert '"applied": 0' in second.stderr
    pool = await create_pool(own_database_url, min_size=1, max_size=1)
    try:  # what a service does at start finds nothing left
        assert await migrate(pool, "metering", "switchboard_metering.migrations") == []
    finally:
        await pool.close()


def test_the_job_names_a_bad_setting() -> None:
    result = run_job("mysql://nowhere/db")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


def test_the_job_fails_when_the_database_is_unreachable() -> None:
    result = run_job("postgresql://nobody@127.0.0.1:9/none")
    assert result.returncode == 1
    assert "database unreachable" in result.stderr


async def test_the_dashboards_ledger_queries_add_up_the_rollups(own_database_url: str) -> None:
    assert run_job(own_database_url).returncode == 0
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = [  # ROLLUP_COLUMNS
        ("key_a", "m1", "openai", now, 2, 100, 50, Decimal("0.25")),
        ("key_b", "m1", "openai", now, 1, 10, 5, Decimal("0.75")),
        ("key_a", "m2", "anthropic", now - timedelta(hours=1), 1, 7, 3, Decimal("2")),
        ("key_a", "m2", "anthropic", now - timedelta(days=3), 1, 7, 3, Decimal("100")),
    ]
    conn = await asyncpg.connect(own_database_url)
    try:
        # Columns added by later migrations (cached, reasoning... tokens) default to 0 here.
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'usage_rollups' AND is_nullable = 'NO'"
            " AND column_default IS NULL"
        )
        zeros = sorted({c["column_name"] for c in columns} - set(ROLLUP_COLUMNS))
        names = ", ".join([*ROLLUP_COLUMNS, *zeros])
        marks = ", ".join(f"${i}" for i in range(1, len(ROLLUP_COLUMNS) + len(zeros) + 1))
        for row in rows:
            await conn.execute(
                f"INSERT INTO usage_rollups ({names}) VALUES ({marks})", *row, *[0] * len(zeros)
            )
        panels = sql_panels()
        assert len(panels) == 3
        results = {
            title: [dict(r) for r in await conn.fetch(grafana_sql(sql))]
            for title, sql in panels.items()
        }
    finally:
        await conn.close()
    spend = next(v for k, v in results.items() if k.startswith("Spend per hour"))
    assert {(r["metric"], r["spend"]) for r in spend} == {
        ("m1 / openai", 1.0),
        ("m2 / anthropic", 2.0),
    }
    tokens = next(v for k, v in results.items() if k.startswith("Tokens per hour"))
    assert {(r["metric"], r["tokens"]) for r in tokens} == {
        ("m1 / openai", 165.0),
        ("m2 / anthropic", 10.0),
    }
    table = next(v for k, v in results.items() if k.startswith("Spend in the range"))
    assert [(r["metric"], r["spend"], r["requests"]) for r in table] == [
        ("m2 / anthropic", 2.0, 1.0),
        ("m1 / openai", 1.0, 3.0),
    ]
