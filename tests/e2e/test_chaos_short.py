"""A short chaos table in the suite: two cheap network faults (3 s each) under the
streaming load of ``make chaos``, asserting only what must hold whatever the fault does to
latency: no service dies or logs a traceback, and the ledger holds exactly what every
client was told. The per-behaviour bounds (how fast a fault is answered, how soon the
router recovers) are asserted by the e2e tests of each behaviour.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.report import HEADER, RULE
from tests.chaos.runner import Rig, Settings, cleanup_redis
from tests.chaos.scenarios import select

pytestmark = [pytest.mark.e2e]

SHORT = Settings(
    fault=3.0,
    warmup=2.0,
    recovery_min=2.0,
    recovery_max=20.0,
    deadline=30.0,
    settle=30.0,
)
# Links no other e2e test breaks (the router's links have test_fault_*.py each).
SCENARIOS = select(["metering-redis-refuse", "catalog-postgres-blackhole"])


async def test_short_chaos_table_keeps_the_ledger_exact_and_nothing_crashes(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    rig = Rig(database_url, redis_url, redis_prefix + "chaos:", tmp_path, SHORT)
    rows = [HEADER, RULE]
    try:
        for scenario in SCENARIOS:
            outcome = await rig.run(scenario)
            rows.append(outcome.row())
            print("\n".join(rows))  # shown with -s
            assert not outcome.exited, outcome.row()
            assert not outcome.tracebacks, f"{outcome.row()}\nlogs in {tmp_path}"
            assert outcome.ledger.exact, outcome.row()
            assert outcome.ledger.told > 0, outcome.row()
            assert not outcome.ledger.unseen, outcome.row()
    finally:
        rig.close()
        await cleanup_redis(redis_url, redis_prefix + "chaos:")
