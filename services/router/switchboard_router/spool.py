"""The router's local durable spool: usage events and settles that could not be delivered.

A usage event goes to the Redis usage outbox (bounded by ``SWITCHBOARD_REDIS_TIMEOUT_SECONDS``),
else to metering's ``RecordUsage`` (bounded by ``SWITCHBOARD_USAGE_FALLBACK_SECONDS``), else
here; a settle goes to Redis, else here (:mod:`.usage_sink`, :mod:`.admission`). So the client's
final message waits about a second at most, and a settle lost to an outage does not leave its
reservation held until it expires. A :class:`Replayer` delivers what the spool holds every
second (and at start, what a previous process on this spool left) and deletes each entry once
it was accepted.

Storage: one SQLite database in WAL mode with ``synchronous=FULL``, so an entry is on disk
before :meth:`Spool.put` returns (and the client is answered); SQLite runs in a worker thread
(``asyncio.to_thread``), never on the event loop. Routers that share a directory share the
spool: each entry is leased while one of them replays it. ``SWITCHBOARD_SPOOL_DIR`` empty means
a directory under the system temp dir named after the Redis and stream the events go to
(:func:`default_dir`): it survives a restart of the router, not a reboot that clears the temp
dir nor the loss of the host, so production mounts a volume there.

Why no usage event is lost or counted twice:

- Metering's ledger keeps one row per ``(generation id, attempt, create time)`` and ignores
  the same event again, from the outbox, ``RecordUsage`` or a replay, in any order. Every path
  may therefore deliver twice (a reply lost after the write went through, a replay of an
  entry whose deletion a crash prevented, two routers replaying a shared spool): the
  generation is counted once.
- A spooled event keeps its generation's in-flight records in Redis (:mod:`.inflight`: the
  FAILED event metering's sweep writes if the router is found dead); only the event's delivery
  removes them, in the script that adds it to the outbox (naming the router that wrote
  them, which may be a previous process), or once ``RecordUsage`` accepted it. So until the
  event is delivered, either the spool or the records hold the generation, and both are
  removed only by a delivery: nothing is lost even when the spool is (the host is gone).
- If metering sweeps the router first (it stopped beating: dead, or cut off from Redis for
  longer than the heartbeat TTL), the sweep's FAILED estimate is recorded first and the
  replayed event is the duplicate the ledger ignores: once, as the sweep recorded it. A
  router restarted on the same spool replays at once, before its former heartbeat expires, so
  the event it answered with wins in that case. An event that went to ``RecordUsage`` while
  Redis was down is in the ledger before any sweep, which is then the duplicate.

Settles: a spooled settle is replayed *late* (:meth:`switchboard_core.budget.BudgetStore.settle`).
It settles only a reservation still held, so one the settled marker (10 minutes), a sweep or
its expiry already dealt with is left alone however late the replay comes, and a reservation
is held seconds after Redis answers again rather than until it expires. It counts the cost
only on counters metering has not loaded or raised since the reservation was made (the
``raises`` epoch the reservation carries): a resync meanwhile may have raised them to a
ledger that already holds the generation; what it leaves uncounted the next resync raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis

from switchboard_core.periodic import BackgroundTask
from switchboard_router import metrics

log = logging.getLogger(__name__)

FILE_NAME = "spool.sqlite3"
# How long an entry claimed by a replay is not claimed again (the replayer crashed meanwhile).
LEASE_SECONDS = 10.0
REPLAY_INTERVAL_SECONDS = 1.0
BATCH = 20
# The most a write waits on another process holding the database (routers sharing a spool).
BUSY_TIMEOUT_MS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    spooled_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0
)
"""
_CLAIM = """
UPDATE spooled SET lease_until = ?
WHERE id IN (SELECT id FROM spooled WHERE lease_until < ? ORDER BY id LIMIT ?)
RETURNING id, kind, body
"""

# A spooled body to its delivery: True when the destination accepted it; False (or an
# exception, logged) when it could not, and the entry waits for the next pass.
Deliver = Callable[[bytes], Awaitable[bool]]


def default_dir(destination: str) -> Path:
    """The spool of routers on this host that deliver to ``destination`` (the Redis address
    and the stream and prefix they use; no credentials): under the system temp dir."""
    digest = hashlib.sha256(destination.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"switchboard-spool-{digest}"


def spool_dir(configured: str, client: redis.Redis, stream: str, prefix: str) -> Path:
    """``SWITCHBOARD_SPOOL_DIR``, else :func:`default_dir` for where ``client`` points."""
    if configured:
        return Path(configured)
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a Redis Cluster client: the node REDIS_URL names (asked nothing yet)
        startup = getattr(client, "startup_nodes", ())
        nodes = sorted(str(getattr(node, "name", node)) for node in startup)
        return default_dir(f"cluster {','.join(nodes)} {stream} {prefix}")
    where = pool.connection_kwargs
    server = where.get("path") or f"{where.get('host')}:{where.get('port')}"
    return default_dir(f"{server}/{where.get('db', 0)} {stream} {prefix}")


def _blob(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    kind: str  # "usage" or "settle"
    body: bytes


class Spool:
    """The spool database at ``directory``/``spool.sqlite3`` (made if missing)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILE_NAME
        self._lock = threading.Lock()  # one statement at a time on the shared connection
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    @classmethod
    async def open(cls, directory: Path) -> Spool:
        spool = await asyncio.to_thread(cls, directory)
        metrics.SPOOL_DEPTH.set(await spool.depth())
        return spool

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    async def put(self, kind: str, body: bytes) -> None:
        """Keep ``body`` durably (on disk when this returns)."""
        await asyncio.to_thread(
            self._run,
            "INSERT INTO spooled (kind, body, spooled_at) VALUES (?, ?, ?)",
            (kind, body, time.time()),
        )
        metrics.SPOOL_WRITES.labels(kind).inc()
        metrics.SPOOL_DEPTH.inc()

    async def claim(self, limit: int = BATCH) -> list[Entry]:
        """The oldest entries no replay holds, leased to the caller for ``LEASE_SECONDS``."""
        now = time.time()
        rows = await asyncio.to_thread(self._run, _CLAIM, (now + LEASE_SECONDS, now, limit))
        entries = [Entry(int(str(r[0])), str(r[1]), _blob(r[2])) for r in rows]
        return sorted(entries, key=lambda entry: entry.id)

    async def done(self, entry: Entry) -> None:
        await asyncio.to_thread(self._run, "DELETE FROM spooled WHERE id = ?", (entry.id,))
        metrics.SPOOL_REPLAYS.labels(entry.kind).inc()

    async def unclaim(self, entries: list[Entry]) -> None:
        """Give entries back at once (they could not be delivered now)."""
        for entry in entries:
            await asyncio.to_thread(
                self._run, "UPDATE spooled SET lease_until = 0 WHERE id = ?", (entry.id,)
            )

    async def depth(self) -> int:
        rows = await asyncio.to_thread(self._run, "SELECT count(*) FROM spooled")
        return int(str(rows[0][0]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Replayer(BackgroundTask):
    """Delivers the spool's entries, oldest first, at start and every ``interval``; a pass
    stops at the first entry that cannot be delivered (its destination is still down)."""

    name = "spool-replay"

    def __init__(
        self,
        spool: Spool,
        deliver: Mapping[str, Deliver],
        interval: float = REPLAY_INTERVAL_SECONDS,
    ) -> None:
        self._spool = spool
        self._deliver = deliver
        self._interval = interval

    async def finish(self, seconds: float = 2.0) -> None:
        """Stop replaying every interval, after one last pass of at most ``seconds`` (a
        router shutting down delivers what it can; the rest waits for the next process)."""
        await self.stop()
        try:
            async with asyncio.timeout(seconds):
                await self.replay()
        except (TimeoutError, sqlite3.Error, OSError) as error:
            # Nothing is lost: what was not delivered stays spooled for the next process.
            log.warning(
                "spool's last replay before stopping did not finish",
                extra={"error": type(error).__name__},
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.replay()
            except (sqlite3.Error, OSError) as error:
                log.error("spool replay failed", extra={"error": type(error).__name__})
            await asyncio.sleep(self._interval)

    async def replay(self) -> int:
        """One pass; returns how many entries were delivered."""
        delivered = 0
        while entries := await self._spool.claim():
            for index, entry in enumerate(entries):
                outcome = await self._deliver_one(entry)
                if outcome is None:  # left leased: tried again once the lease lapses
                    continue
                if not outcome:
                    await self._spool.unclaim(entries[index:])
                    await self._refresh_depth()
                    return delivered
                await self._spool.done(entry)
                delivered += 1
        if delivered:
            log.info("spooled entries delivered", extra={"entries": delivered})
        await self._refresh_depth()
        return delivered

    async def _deliver_one(self, entry: Entry) -> bool | None:
        """Whether the entry was delivered; None when it is not for this router to deliver
        (a kind it does not know) or its delivery crashed: the others go on."""
        deliver = self._deliver.get(entry.kind)
        if deliver is None:
            return None
        try:
            return await deliver(entry.body)
        except Exception:
            log.exception("spooled entry could not be delivered", extra={"kind": entry.kind})
            return None

    async def _refresh_depth(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            metrics.SPOOL_DEPTH.set(await self._spool.depth())
