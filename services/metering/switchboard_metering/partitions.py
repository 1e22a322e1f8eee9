"""Monthly partitions of the ``generations`` ledger, and its retention.

``generations`` is partitioned by month (UTC) of ``created_at``: one table per month, named
``generations_YYYY_MM``. :meth:`Partitions.ensure` creates the partitions a batch of events
needs before the ledger writes it (remembering which exist, so the common case costs
nothing). :meth:`Partitions.maintain`, run at start and then hourly by metering, creates the
current and next month's partitions ahead of time and applies retention: partitions whose
whole month ended before ``now - retention`` are dropped, and ``ledger_retention.
retained_from`` moves to the first kept month in the same transaction. The ledger ignores
events dated before ``retained_from`` (they were counted when first written; their rows are
gone). Rollups are never dropped, so usage queries, spend and budgets keep every month.

:meth:`Partitions.ensure` creates partitions only for the months of the accepted window
(:class:`~switchboard_metering.event_rules.EventWindow`, from the maximum event age before now
to the clock-skew allowance after it) and from ``retained_from`` on: an event dated 1970 or
9999 is refused before it gets here, and were one to slip through it would find no partition
rather than create one. So the partitions that writes can create are bounded by the window
(14 months by default), whatever events arrive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from switchboard_core.periodic import Periodic
from switchboard_metering.event_rules import EventWindow

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_SECONDS = 3600.0
_PARTITION_NAME = re.compile(r"^generations_(\d{4})_(\d{2})$")
_LIST = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'generations'::regclass
"""
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('switchboard.generations_partitions'))"


def month_start(at: datetime) -> datetime:
    """The first instant (UTC) of ``at``'s month."""
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def partition_month(name: str) -> datetime | None:
    match = _PARTITION_NAME.match(name)
    if match is None:
        return None
    return datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Maintenance:
    created: list[str]
    dropped: list[str]
    retained_from: datetime | None  # None: everything is kept


class Partitions:
    """Creates and drops the ledger's monthly partitions; one per metering process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        retention: timedelta | None = None,
        window: EventWindow | None = None,
    ) -> None:
        self._pool = pool
        self.retention = retention
        self.window = window or EventWindow()
        self._known: set[datetime] = set()
        self._maintenance = Periodic(
            "ledger-partitions",
            self.maintain,
            MAINTENANCE_INTERVAL_SECONDS,
            (OSError, asyncpg.PostgresError, asyncpg.InterfaceError),
        )

    async def ensure(self, months: Iterable[datetime], *, now: datetime | None = None) -> None:
        """Create the partitions of ``months`` (any instant in each) that may be missing,
        among those the window around ``now`` (else the window's clock) overlaps; others
        are left without a partition (their events were refused already)."""
        oldest, newest = self.window.bounds(now)
        first, last = month_start(oldest), month_start(newest)
        wanted = {month_start(m) for m in months}
        outside = {m for m in wanted if not first <= m <= last}
        if outside:
            log.error(
                "ledger partitions outside the accepted window not created",
                extra={"months": sorted(f"{m:%Y-%m}" for m in outside)},
            )
        missing = sorted(wanted - outside - self._known)
        if not missing:
            return
        # Months before the retention horizon stay without a partition: the ledger ignores
        # their events.
        await self._pool.execute(
            "SELECT generations_partition_for(month) FROM unnest($1::timestamptz[]) AS month"
            " WHERE month >= (SELECT retained_from FROM ledger_retention)",
            missing,
        )
        self._known.update(missing)

    def forget(self) -> None:
        """Forget which partitions exist (after a write found one missing)."""
        self._known.clear()

    async def maintain(self, now: datetime | None = None) -> Maintenance:
        """Create this and next month's partitions; drop those past retention."""
        now = now or datetime.now(UTC)
        this_month = month_start(now)
        ahead = [this_month, next_month(this_month)]
        horizon = month_start(now - self.retention) if self.retention is not None else None
        created: list[str] = []
        dropped: list[str] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK)
            existing = {str(row["relname"]) for row in await conn.fetch(_LIST)}
            for month in ahead:
                name = await conn.fetchval("SELECT generations_partition_for($1)", month)
                if name not in existing:
                    created.append(name)
            if horizon is not None:
                await conn.execute(
                    "UPDATE ledger_retention SET retained_from = greatest(retained_from, $1)",
                    horizon,
                )
                for name in sorted(existing):
                    dated = partition_month(name)
                    if dated is not None and dated < horizon:
                        await conn.execute(f'DROP TABLE "{name}"')
                        dropped.append(name)
        self._known.difference_update(m for m in map(partition_month, dropped) if m)
        self._known.update(ahead)
        if created or dropped:
            log.info(
                "ledger partitions maintained",
                extra={"partitions_created": created, "partitions_dropped": dropped},
            )
        return Maintenance(created=created, dropped=dropped, retained_from=horizon)

    def start(self) -> None:
        self._maintenance.start()

    async def stop(self) -> None:
        await self._maintenance.stop()
