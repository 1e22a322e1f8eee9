"""Applies scheduled prices (``Endpoint.scheduled_prices``) when their time comes.

One :class:`PriceScheduler` per catalog process. It applies every due price at start, then
sleeps until the next scheduled time (measured on the database's clock, which decides what is
due), but never longer than ``max_wait_seconds``, so that a schedule another replica wrote is
seen within that bound. Each due price is applied by :meth:`CatalogStore.apply_due_price` in
its own transaction: the endpoint's price, its history row effective exactly at the scheduled
time, the row's deletion and the version bump together; ``FOR UPDATE SKIP LOCKED`` makes
several replicas apply each row once. Watchers (routers, metering) then get the new price
through ``WatchCatalog``, like any other change.

A price applied late (the catalog was down at its time) is still recorded as effective at its
scheduled time: the price the provider bills from then on. Routers billed the old price
meanwhile; metering's cost check accepts the old price for an event created up to its lag
window (``SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS`` plus the request deadline) after the change,
so an outage of the catalog longer than that at the change time leaves those events refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter

from switchboard_catalog.store import CatalogStore
from switchboard_catalog.watch import DB_ERRORS

log = logging.getLogger(__name__)

APPLIED = Counter(
    "switchboard_catalog_scheduled_prices_applied_total",
    "Scheduled prices this process applied (moved into the endpoint at their time).",
)
DEFAULT_MAX_WAIT_SECONDS = 60.0
# After a failed round trip, or when a due row is held by another replica's transaction.
RETRY_SECONDS = 1.0
# Applied in one pass at most; the loop comes straight back for more.
MAX_PER_PASS = 1000


class PriceScheduler:
    def __init__(
        self, store: CatalogStore, *, max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    ) -> None:
        self._store = store
        self._max_wait = max_wait_seconds
        self._task: asyncio.Task[None] | None = None
        # For tests and debugging: prices this scheduler applied.
        self.applied = 0

    async def start(self) -> None:
        """Applies what is due now, then follows the schedule in the background."""
        await self.apply_due()
        self._task = asyncio.create_task(self._loop(), name="catalog-price-scheduler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def apply_due(self) -> int:
        """Applies every due price no other transaction holds; returns how many."""
        count = 0
        while count < MAX_PER_PASS:
            applied = await self._store.apply_due_price()
            if applied is None:
                break
            count += 1
            self.applied += 1
            APPLIED.inc()
        return count

    async def _next_wait(self) -> float:
        """Seconds until the next scheduled time, within [0, max_wait]; RETRY_SECONDS when
        one is already due (held by another replica, or more than a pass could apply)."""
        next_at, now = await self._store.next_scheduled()
        if next_at is None:
            return self._max_wait
        seconds = (next_at - now).total_seconds()
        if seconds <= 0:
            return min(RETRY_SECONDS, self._max_wait)
        return min(seconds, self._max_wait)

    async def _loop(self) -> None:
        while True:
            wait = RETRY_SECONDS
            try:
                wait = await self._next_wait()
            except DB_ERRORS as error:
                log.warning("price schedule check failed", extra={"error": repr(error)})
            except Exception:
                log.exception("price schedule check failed unexpectedly")
            await asyncio.sleep(wait)
            try:
                await self.apply_due()
            except DB_ERRORS as error:
                log.warning("applying scheduled prices failed", extra={"error": repr(error)})
            except Exception:
                # Keep following the schedule whatever happened; the traceback is in the log.
                log.exception("applying scheduled prices failed unexpectedly")
