"""Recompute the usage rollups from the ledger and report every difference.

``generations`` is the truth; ``usage_rollups`` is derived from it in the same transaction as
each insert, so the two must always agree. :func:`reconcile` recomputes the hourly rollups
from ``generations`` and compares them cell by cell with the stored ones (rows missing on
either side included). With ``fix=True`` it replaces the rollups with the recomputed ones in
one transaction that holds ledger writes back meanwhile. Only the retained range is compared:
rollups older than ``ledger_retention.retained_from`` outlive the partitions they came from.
It also reports any generation attempt recorded twice (under two different create times),
which the ledger's key cannot rule out by itself. And, given the catalog's price history, it
prices every row again with the price that billed it (:mod:`switchboard_metering.repricing`)
and reports the rows whose cost differs; those are reported, never changed.

Run it with ``python -m switchboard_metering reconcile [--fix] [--no-costs]``
(``make reconcile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from switchboard_metering.ledger import COUNT_FIELDS

COLUMNS = ("requests", *COUNT_FIELDS, "cost")
_GROUP = "key_id, model_id, provider_id, bucket_start"
_COMPUTED = f"""
SELECT key_id, model_id, provider_id, date_trunc('hour', created_at, 'UTC') AS bucket_start,
       count(*)::bigint AS requests,
       {", ".join(f"sum({c})::bigint AS {c}" for c in COUNT_FIELDS)},
       sum(cost) AS cost
FROM generations
GROUP BY 1, 2, 3, 4
"""
_RETAINED = "(SELECT retained_from FROM ledger_retention)"
_ROLLUPS = f"(SELECT * FROM usage_rollups WHERE bucket_start >= {_RETAINED})"
_TWICE = """
SELECT generation_id, attempt, count(*) AS copies FROM generations
GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1, 2
"""
_COMPARE = f"""
WITH computed AS ({_COMPUTED})
SELECT coalesce(c.key_id, r.key_id) AS key_id,
       coalesce(c.model_id, r.model_id) AS model_id,
       coalesce(c.provider_id, r.provider_id) AS provider_id,
       coalesce(c.bucket_start, r.bucket_start) AS bucket_start,
       {", ".join(f"c.{col} AS ledger_{col}, r.{col} AS rollup_{col}" for col in COLUMNS)}
FROM computed c
FULL OUTER JOIN {_ROLLUPS} r USING ({_GROUP})
WHERE {" OR ".join(f"c.{col} IS DISTINCT FROM r.{col}" for col in COLUMNS)}
ORDER BY 1, 2, 3, 4
"""
_REPLACE = f"""
DELETE FROM usage_rollups WHERE bucket_start >= {_RETAINED};
INSERT INTO usage_rollups ({_GROUP}, {", ".join(COLUMNS)})
SELECT {_GROUP}, {", ".join(COLUMNS)} FROM ({_COMPUTED}) AS computed;
"""


@dataclass(frozen=True, slots=True)
class Difference:
    key_id: str
    model_id: str
    provider_id: str
    bucket_start: datetime
    column: str
    ledger: int | Decimal | None  # None: no such row on that side
    rollup: int | Decimal | None

    def __str__(self) -> str:
        where = f"{self.key_id} {self.model_id} {self.provider_id} {self.bucket_start:%Y-%m-%dT%H}"
        return f"{where} {self.column}: ledger {self.ledger} != rollup {self.rollup}"


@dataclass(frozen=True, slots=True)
class Duplicate:
    generation_id: str
    attempt: int
    copies: int

    def __str__(self) -> str:
        return f"{self.generation_id} attempt {self.attempt}: {self.copies} ledger rows"


def _differences(rows: list[asyncpg.Record]) -> list[Difference]:
    out = []
    for row in rows:
        for column in COLUMNS:
            ledger, rollup = row[f"ledger_{column}"], row[f"rollup_{column}"]
            if ledger != rollup:
                out.append(
                    Difference(
                        row["key_id"],
                        row["model_id"],
                        row["provider_id"],
                        row["bucket_start"],
                        column,
                        ledger,
                        rollup,
                    )
                )
    return out


async def duplicates(pool: asyncpg.Pool) -> list[Duplicate]:
    """Generation attempts with more than one ledger row (there must be none)."""
    return [
        Duplicate(r["generation_id"], r["attempt"], r["copies"]) for r in await pool.fetch(_TWICE)
    ]


async def reconcile(pool: asyncpg.Pool, *, fix: bool = False) -> list[Difference]:
    """The differences between the ledger and the rollups (before fixing, when ``fix``)."""
    async with pool.acquire() as conn, conn.transaction():
        if fix:
            # SHARE on generations holds new ledger rows back; EXCLUSIVE on the rollups keeps
            # other writers out while they are replaced. Readers carry on.
            await conn.execute("LOCK TABLE generations IN SHARE MODE")
            await conn.execute("LOCK TABLE usage_rollups IN EXCLUSIVE MODE")
        differences = _differences(await conn.fetch(_COMPARE))
        if fix and differences:
            await conn.execute(_REPLACE)
    return differences
