"""Provisional ledger rows: a swept generation replaced by its router's own event.

Metering's liveness sweep (:mod:`switchboard_core.liveness`) records the generations of a
router whose heartbeat expired as FAILED estimates, marked ``swept``. Death cannot be told
from silence: a router cut off from Redis past the heartbeat TTL is swept too, then finishes
its streams, tells each client its real usage and delivers its own event for the same
``(generation_id, attempt, created_at)``. That event replaces the swept row: every value it
carries (usage, cost, status, finish, estimated, latency, price version...), and the
difference moves into ``usage_rollups`` (the same cell: same key, model, provider and hour;
``requests`` unchanged), so the rollups stay the ledger's sums.

Exactly once: only a row still ``swept`` is replaced, and the replacement clears the flag, so
a second real event is a duplicate, and so is a swept event arriving after the real one (its
insert conflicts). A real event naming another key, account, model or provider than the swept
row is a duplicate too (the rollup cell, and the owner, of a generation never change).

:meth:`switchboard_metering.ledger.Ledger.write` runs :data:`correction_sql` after its insert
statement, only when that statement skipped events that are not swept (a duplicate or a
correction: it cannot tell which). Two statements, because the insert waits for a concurrent
writer of the same key and then skips it, but a later part of the same statement would not
see that writer's row (one snapshot per statement): the correction, with a snapshot taken
after the insert, sees every row of the batch's keys. It locks the swept rows (``FOR UPDATE``,
in key order, like the insert) and replaces them and updates the rollups in one statement, so
two writers of the same real event correct once. The two statements commit apart: a crash
between them leaves the event unacknowledged (the outbox claims it again, RecordUsage's
caller retries or spools it), and its replay finds the row still swept and corrects it.

The event was checked like any other before either statement (:mod:`switchboard_metering
.event_rules`, the cost check): a correction writes only what an insert would have.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from prometheus_client import Counter

from switchboard_metering.event_rules import COUNT_FIELDS

log = logging.getLogger(__name__)

EVENTS_CORRECTED = Counter(
    "switchboard_usage_events_corrected_total",
    "Swept (provisional) ledger rows replaced by their router's own usage event, by source.",
    ["source"],
)
for _source in ("outbox", "rpc"):  # export zeros before the first event
    EVENTS_CORRECTED.labels(_source)

_KEY = ("generation_id", "attempt", "created_at")
# What a correction may not change: the rollup cell (with created_at) and the owner.
_IDENTITY = ("key_id", "account_id", "model_id", "provider_id")


def correction_sql(columns: tuple[tuple[str, str], ...]) -> str:
    """The correction statement over the ledger's insert arrays (``columns``: its column
    names and Postgres types, in parameter order). Returns one row: ``corrected``."""
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(columns, start=1))
    key = ", ".join(_KEY)
    replaced = [name for name, _ in columns if name not in (*_KEY, *_IDENTITY)]
    sums = ("requests", *COUNT_FIELDS, "cost")
    return f"""
WITH input AS (
    SELECT DISTINCT ON ({key}) {names}
    FROM unnest({arrays}) WITH ORDINALITY AS e({names}, ord)
    WHERE NOT swept
    ORDER BY {key}, ord
),
old AS (
    SELECT {", ".join(f"g.{name}" for name in (*_KEY, *COUNT_FIELDS, "cost"))}
    FROM generations g JOIN input i USING ({key})
    WHERE g.swept AND {" AND ".join(f"g.{name} = i.{name}" for name in _IDENTITY)}
    ORDER BY {", ".join(f"g.{name}" for name in _KEY)}
    FOR UPDATE OF g
),
corrected AS (
    UPDATE generations g SET {", ".join(f"{name} = i.{name}" for name in replaced)}
    FROM input i JOIN old o USING ({key})
    WHERE g.swept AND {" AND ".join(f"g.{name} = o.{name}" for name in _KEY)}
    RETURNING g.key_id, g.model_id, g.provider_id, g.created_at,
        {", ".join(f"g.{name} - o.{name} AS {name}" for name in (*COUNT_FIELDS, "cost"))}
),
rolled AS (
    INSERT INTO usage_rollups
        (key_id, model_id, provider_id, bucket_start, {", ".join(sums)})
    SELECT key_id, model_id, provider_id, date_trunc('hour', created_at, 'UTC'), 0,
        {", ".join(f"sum({name})" for name in (*COUNT_FIELDS, "cost"))}
    FROM corrected
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (key_id, model_id, provider_id, bucket_start) DO UPDATE SET
        {", ".join(f"{name} = usage_rollups.{name} + EXCLUDED.{name}" for name in sums)}
)
SELECT count(*) AS corrected FROM corrected
"""


async def correct(pool: asyncpg.Pool, sql: str, columns: list[list[Any]], source: str) -> int:
    """Run :func:`correction_sql`'s statement ``sql`` over a batch's arrays; returns how many
    swept rows it replaced (counted by ``source``)."""
    corrected = int(await pool.fetchval(sql, *columns))
    if corrected:
        EVENTS_CORRECTED.labels(source).inc(corrected)
        log.info("swept generations replaced by their routers' events", extra={"count": corrected})
    return corrected
