"""Change broadcast for ``WatchCatalog``.

One :class:`CatalogBroadcaster` per process keeps the latest catalog snapshot, serialized once
per version, and wakes every watcher when it changes. Watchers never touch the database: a slow
watcher simply skips to the newest snapshot. Changes are noticed through Postgres
``LISTEN switchboard_catalog`` on one dedicated connection (so every replica hears every
replica's writes), with a slow version poll as a safety net while that connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog.store import NOTIFY_CHANNEL, CatalogStore
from switchboard_core.errors import Unavailable

log = logging.getLogger(__name__)

WATCHERS = Gauge("switchboard_catalog_watchers", "Open WatchCatalog streams.")
VERSION = Gauge("switchboard_catalog_version", "Catalog version of the latest snapshot.")
SNAPSHOTS = Counter(
    "switchboard_catalog_snapshots_built_total", "Catalog snapshots built (one per version)."
)

# What a failed database round trip raises; the loops below log these and carry on.
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

# Shown in pg_stat_activity for the LISTEN connection.
LISTEN_APPLICATION_NAME = "switchboard-catalog-listen"
_FIRST_RECONNECT_SECONDS = 0.1


@dataclass(frozen=True)
class Snapshot:
    version: int
    # A serialized ``WatchCatalogResponse`` without the price history, shared by every
    # watcher that did not ask for it (the routers).
    payload: bytes
    # The same with ``price_history`` (metering), shared likewise.
    with_history: bytes = b""

    @classmethod
    def of(cls, response: catalog_pb2.WatchCatalogResponse) -> Snapshot:
        """Both payloads of ``response``, each serialized once. Serialized messages
        concatenated parse as one message with the fields of both (the protobuf encoding
        merges them), so the second is the first plus the history alone."""
        history = catalog_pb2.WatchCatalogResponse(price_history=response.price_history)
        base = catalog_pb2.WatchCatalogResponse()
        base.CopyFrom(response)
        base.ClearField("price_history")
        payload = base.SerializeToString()
        return cls(response.version, payload, payload + history.SerializeToString())

    def payload_for(self, *, include_price_history: bool) -> bytes:
        return self.with_history if include_price_history else self.payload


class CatalogBroadcaster:
    def __init__(
        self,
        store: CatalogStore,
        dsn: str,
        *,
        poll_seconds: float = 5.0,
        max_reconnect_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._dsn = dsn
        self._poll_seconds = poll_seconds
        self._max_reconnect_seconds = max_reconnect_seconds
        self._current: Snapshot | None = None
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._refreshing = asyncio.Lock()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers = 0
        # Counters for tests and debugging; the Prometheus metrics above are per process.
        self.snapshots_built = 0
        self.listen_connects = 0

    @property
    def current(self) -> Snapshot | None:
        return self._current

    @property
    def watchers(self) -> int:
        return self._watchers

    async def start(self) -> None:
        """Builds the first snapshot, then follows changes in the background."""
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="catalog-refresh"),
            asyncio.create_task(self._listen_loop(), name="catalog-listen"),
        ]

    async def close(self) -> None:
        """Ends every watch stream and stops the background tasks."""
        if self._closed:
            return
        self._closed = True
        async with self._changed:
            self._changed.notify_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def refresh(self) -> None:
        """Publishes a new snapshot if the stored version differs from the current one."""
        async with self._refreshing:
            current = self._current
            if current is not None and await self._store.version() == current.version:
                return
            snapshot = Snapshot.of(await self._store.snapshot())
            SNAPSHOTS.inc()
            self.snapshots_built += 1
        async with self._changed:
            self._current = snapshot
            self._changed.notify_all()
        VERSION.set(snapshot.version)
        log.info("catalog snapshot published", extra={"catalog_version": snapshot.version})

    async def watch(self, known_version: int) -> AsyncGenerator[Snapshot, None]:
        """The current snapshot unless it is ``known_version``, then each newer one.

        Raises :class:`Unavailable` when the broadcaster closes (server shutdown), so that
        clients reconnect elsewhere instead of waiting out the grace period.
        """
        last = known_version
        self._watchers += 1
        WATCHERS.inc()
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._ready, last))
                    if self._closed:
                        raise Unavailable(
                            "catalog server is shutting down; reconnect",
                            reason="SHUTTING_DOWN",
                            retry_after_seconds=1.0,
                        )
                    snapshot = self._current
                assert snapshot is not None
                last = snapshot.version
                yield snapshot
        finally:
            self._watchers -= 1
            WATCHERS.dec()

    def _ready(self, known: int) -> bool:
        """Closed, or holding a snapshot other than ``known``."""
        return self._closed or (self._current is not None and self._current.version != known)

    async def _refresh_loop(self) -> None:
        """Refreshes on each notification, and every ``poll_seconds`` regardless."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except DB_ERRORS as error:
                log.warning("catalog refresh failed", extra={"error": repr(error)})
            except Exception:
                # Keep following changes whatever happened; the traceback is in the log.
                log.exception("catalog refresh failed unexpectedly")

    async def _listen_loop(self) -> None:
        """Keeps one LISTEN connection open, reconnecting with backoff when it drops."""
        delay = _FIRST_RECONNECT_SECONDS
        while True:
            connects = self.listen_connects
            try:
                await self._listen_once()
            except DB_ERRORS as error:
                log.warning("catalog LISTEN connection lost", extra={"error": repr(error)})
            if self.listen_connects != connects:
                delay = _FIRST_RECONNECT_SECONDS
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_seconds)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": LISTEN_APPLICATION_NAME}
        )
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.listen_connects += 1
            self._wake.set()  # catch up on changes made while we were not listening
            log.info("listening for catalog changes")
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_seconds):
                        await lost.wait()
                if not lost.is_set():
                    # A half-open connection hears nothing; a round trip finds it out.
                    await conn.execute("SELECT 1", timeout=self._poll_seconds)
            log.warning("catalog LISTEN connection closed by the server")
        finally:
            try:
                await conn.close(timeout=2)
            except DB_ERRORS as error:  # a lost connection: nothing to close
                log.info(
                    "closing the LISTEN connection failed", extra={"error": type(error).__name__}
                )

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            version = int(str(payload))
        except ValueError:
            version = None
        current = self._current
        if version is None or current is None or version != current.version:
            self._wake.set()
