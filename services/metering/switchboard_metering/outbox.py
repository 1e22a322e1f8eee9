"""The usage outbox consumer: drains the Redis stream that routers write usage events to.

Each entry's field ``e`` is a serialized ``UsageEvent``. A batch is written to the ledger in
one transaction and only then acknowledged (``XACK``) and deleted (``XDEL``), so an event is
never acknowledged unwritten; the ledger's idempotency makes redelivery harmless. Entries that
cannot be parsed, fail the ledger's checks (:mod:`switchboard_metering.event_rules`) or that
Postgres refuses go to ``<stream>:dead`` one by one, counted by a bounded reason and logged as
errors (entry id and field names, never the payload): the events around them are written.
Entries left pending by a consumer that died are claimed with ``XAUTOCLAIM`` once idle long
enough. An entry whose cost the price check cannot settle yet (a price change may still be on
its way to metering: :mod:`switchboard_metering.cost_check`) is left pending, counted, and
checked again when it is claimed that way; the events around it are written. When Postgres
or Redis is down the consumer logs, backs off and retries; it never exits
until :meth:`OutboxConsumer.stop`.

While the stream has more, the next batch is read and prepared (parsed, checked, turned into
the ledger's arrays) while Postgres writes the current one; writes stay one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as redis
from prometheus_client import Counter, Gauge, Histogram
from redis import exceptions as redis_errors

from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Batch, Ledger
from switchboard_metering.outbox_entries import (
    MALFORMED,
    REFUSED,
    Dead,
    Deferred,
    Entry,
    Good,
    read_entry,
    stream_entries,
)
from switchboard_metering.outbox_entries import (
    parse_entry as parse_entry,  # re-exported: tests and the benchmark read entries here
)

log = logging.getLogger(__name__)

BATCH_SECONDS = Histogram(
    "switchboard_usage_batch_seconds",
    "Time to write one batch of outbox entries to the ledger and acknowledge it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_LAG = Gauge(
    "switchboard_usage_outbox_lag",
    "Entries in a usage outbox stream not yet written and acknowledged (stream: its name).",
    ["stream"],
)
DEAD_LETTERED = Counter(
    "switchboard_usage_events_dead_lettered_total",
    "Outbox entries moved to the dead-letter stream, by reason: malformed (not a UsageEvent),"
    " invalid (failed the ledger's checks; field: the first bad one) or refused (by Postgres).",
    ["reason", "field"],
)
for _reason in (MALFORMED, REFUSED):  # export zeros before the first dead letter
    DEAD_LETTERED.labels(_reason, "")
DEFERRED = Counter(
    "switchboard_usage_events_deferred_total",
    "Outbox entries left pending to be checked again: their cost matched no price metering"
    " knew yet while a price change could still be on its way (field: cost_usd or"
    " endpoint_id). Each check that defers one counts.",
    ["field"],
)

# Worth retrying as they are: the database or Redis is unreachable, restarting or busy.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # What asyncpg raises on a connection the server closed while it sat idle in the pool.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
)
# Postgres refused some row of the batch: retry event by event to isolate it.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch read from the stream: its entries parsed and checked, its events ready to write."""

    prepare_seconds: float  # parsing and checking it took
    gone: list[bytes]  # deleted while pending: only to acknowledge
    dead: list[Dead]  # malformed or invalid: to the dead-letter stream
    good: list[Good]
    batch: Batch
    deferred: tuple[Deferred, ...] = ()  # left pending: neither written nor acknowledged


class Backoff:
    """Capped exponential backoff with jitter."""

    def __init__(self, cap: float, base: float = 0.05) -> None:
        self.cap = cap
        self.base = base
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class OutboxConsumer:
    """One consumer of the usage outbox consumer group, run as a background task."""

    def __init__(self, client: redis.Redis, ledger: Ledger, settings: OutboxSettings) -> None:
        self._redis = client
        self._ledger = ledger
        self.settings = settings
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Re-read our own pending entries (from id 0, a page at a time) before new ones: set
        # at start and after any failure, so entries read but not acknowledged are retried,
        # not forgotten. Deferred entries stay pending: the pages move past them.
        self._own_pending = True
        self._pending_after: bytes = b"0"
        self._next_claim = 0.0

    def start(self, ready: Awaitable[object] | None = None) -> None:
        """Start consuming, once ``ready`` is done when given (metering's first view of the
        catalog's prices, itself bounded: see ``app.py``); :meth:`stop` does not wait for it."""
        self._task = asyncio.create_task(self._run(ready), name="usage-outbox-consumer")
        log.info(
            "usage outbox consumer started",
            extra={"stream": self.settings.stream, "consumer": self.settings.consumer},
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish the batch in hand (up to ``timeout``), then stop."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._forget_consumer()
        log.info("usage outbox consumer stopped", extra={"consumer": self.settings.consumer})

    async def _run(self, ready: Awaitable[object] | None = None) -> None:
        if ready is not None:
            first = {asyncio.ensure_future(ready), asyncio.ensure_future(self._stopping.wait())}
            _, waiting = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            for task in waiting:
                task.cancel()
        backoff = Backoff(self.settings.max_backoff_seconds)
        group_ready = False
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                await self._step()
                backoff.reset()
            except redis_errors.ResponseError as error:
                if str(error).startswith("NOGROUP"):  # Redis lost the stream: recreate it
                    group_ready = False
                await self._pause(backoff, error, "redis refused a command")
            except TRANSIENT_ERRORS as error:
                await self._pause(backoff, error, "storage unavailable")
            except Exception as error:  # never let the consumer die; log loudly, retry
                log.exception("usage outbox: unexpected error")
                await self._pause(backoff, error, "unexpected error")

    async def _pause(self, backoff: Backoff, error: BaseException, what: str) -> None:
        self._own_pending, self._pending_after = True, b"0"
        delay = backoff.next_delay()
        log.warning(
            f"usage outbox: {what}; retrying",
            extra={"error": type(error).__name__, "retry_in_seconds": round(delay, 3)},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _ensure_group(self) -> None:
        """Create the stream and group if missing, from the stream's start (id 0)."""
        try:
            await self._redis.xgroup_create(
                self.settings.stream, self.settings.group, id="0", mkstream=True
            )
        except redis_errors.ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise

    async def _step(self) -> None:
        if self._own_pending:
            entries = await self._read(self._pending_after)
            if entries:
                self._pending_after = entries[-1][0]
                await self._handle(entries)
                return
            self._own_pending, self._pending_after = False, b"0"
        now = time.monotonic()
        if now >= self._next_claim:
            await self._claim_abandoned()
            OUTBOX_LAG.labels(self.settings.stream).set(
                await self._redis.xlen(self.settings.stream)
            )
            self._next_claim = now + self.settings.claim_interval_seconds
        entries = await self._read(">", block=True)
        if entries and len(entries) < self.settings.batch_size and self.settings.linger_seconds:
            entries += await self._linger(self.settings.batch_size - len(entries))
        if entries:
            await self._pipeline(self._prepare(entries))

    async def _linger(self, room: int) -> list[Entry]:
        """A trickle: wait ``linger_seconds`` (or until stopped), then take what came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.settings.linger_seconds)
        return await self._read(">", count=room)

    async def _pipeline(self, prepared: Prepared) -> None:
        """Write batch after batch while the stream has more, reading and preparing the next
        one while Postgres writes the current one. Writes stay one at a time and each batch
        is acknowledged after its own commit; a failure leaves the entries read ahead pending
        on this consumer, to be read again (``_own_pending``)."""
        current: Prepared | None = prepared
        while current is not None:
            commit = asyncio.create_task(self._commit(current))
            try:
                # Back to _step now and then, to claim abandoned entries and report the lag.
                pause = self._stopping.is_set() or time.monotonic() >= self._next_claim
                following = [] if pause else await self._read(">")
                current = self._prepare(following) if following else None
            finally:
                await commit

    async def _read(
        self, from_id: str | bytes, *, block: bool = False, count: int | None = None
    ) -> list[Entry]:
        response = await self._redis.xreadgroup(
            self.settings.group,
            self.settings.consumer,
            {self.settings.stream: from_id},
            count=count or self.settings.batch_size,
            block=self.settings.block_ms if block else None,
        )
        return stream_entries(response)

    async def _claim_abandoned(self) -> None:
        """Take over entries that other (presumably dead) consumers left pending."""
        start: Any = "0-0"
        while not self._stopping.is_set():
            reply = await self._redis.xautoclaim(
                self.settings.stream,
                self.settings.group,
                self.settings.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=start,
                count=self.settings.batch_size,
            )
            start, entries = reply[0], reply[1]
            if entries:
                log.info("usage outbox: claimed abandoned entries", extra={"count": len(entries)})
                await self._handle(entries)
            if start in (b"0-0", "0-0"):
                return

    async def _handle(self, entries: list[Entry]) -> None:
        """Write the batch's events, dead-letter its malformed entries, then acknowledge."""
        await self._commit(self._prepare(entries))

    def _prepare(self, entries: list[Entry]) -> Prepared:
        """Parse and check a batch, and build the ledger's arrays (no I/O)."""
        started = time.perf_counter()
        rules, now = self._ledger.rules, self._ledger.rules.window.clock()
        good: list[Good] = []
        dead: list[Dead] = []
        gone: list[bytes] = []
        deferred: list[Deferred] = []
        for entry_id, fields in entries:
            if fields is None:
                gone.append(entry_id)
                continue
            parsed = read_entry(entry_id, fields, rules, now)
            if isinstance(parsed, Dead):
                dead.append(parsed)
            elif isinstance(parsed, Deferred):
                deferred.append(parsed)
            else:
                good.append((entry_id, fields[EVENT_FIELD], parsed))
        batch = self._ledger.prepare([event for _, _, event in good], checked=True, checked_at=now)
        spent = time.perf_counter() - started
        return Prepared(spent, gone, dead, good, batch, tuple(deferred))

    async def _commit(self, prepared: Prepared) -> None:
        started = time.perf_counter()
        if prepared.dead:
            await self._dead_letter(prepared.dead)
        written = await self._write(prepared.good, prepared.batch)
        await self._ack([*prepared.gone, *written])
        if prepared.deferred:
            for deferred in prepared.deferred:
                DEFERRED.labels(deferred.field).inc()
            log.warning(
                "usage outbox: entries left pending until their cost can be checked",
                extra={"entries": len(prepared.deferred), "field": prepared.deferred[0].field},
            )
        # Its own work only: a batch read ahead does not count the wait for the one before.
        BATCH_SECONDS.observe(prepared.prepare_seconds + time.perf_counter() - started)

    async def _write(self, good: list[Good], batch: Batch) -> list[bytes]:
        """Write events to the ledger; returns the ids of the entries now safe to ack."""
        if not good:
            return []
        try:
            await self._ledger.write(batch, source="outbox")
            return [entry_id for entry_id, _, _ in good]
        except DATA_ERRORS:
            log.warning(
                "usage outbox: Postgres refused a batch; writing it event by event",
                extra={"events": len(good)},
            )
        written: list[bytes] = []
        for entry_id, raw, event in good:
            try:
                await self._ledger.record(
                    [event], source="outbox", checked=True, checked_at=batch.checked_at
                )
                written.append(entry_id)
            except DATA_ERRORS as error:
                sqlstate = getattr(error, "sqlstate", "?")
                why = f"refused by Postgres ({sqlstate})"
                await self._dead_letter([Dead(entry_id, raw, why, REFUSED)])
        return written

    async def _dead_letter(self, dead: list[Dead]) -> None:
        # Two steps: the dead-letter stream has a hash slot of its own (Redis Cluster refuses a
        # MULTI across slots). Added first, then acknowledged: a crash between leaves the
        # entries pending, and they are dead-lettered again (a duplicate naming the same
        # entry id), never lost.
        async with self._redis.pipeline(transaction=True) as pipe:
            for d in dead:
                pipe.xadd(
                    self.settings.dead_letter_stream,
                    {EVENT_FIELD: d.raw, b"id": d.entry_id, b"reason": d.why},
                )
            await pipe.execute()
        await self._ack([d.entry_id for d in dead])
        for d in dead:
            DEAD_LETTERED.labels(d.reason, d.field).inc()
            # An error: the router told its client a cost this entry will not add to the ledger.
            log.error(
                "usage outbox: entry moved to the dead-letter stream",
                extra={"entry_id": d.entry_id.decode(), "reason": d.reason, "why": d.why},
            )

    async def _ack(self, ids: list[bytes]) -> None:
        if not ids:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.settings.stream, self.settings.group, *ids)
            pipe.xdel(self.settings.stream, *ids)
            await pipe.execute()

    async def _forget_consumer(self) -> None:
        """Remove this consumer from the group when it holds nothing pending."""
        try:
            pending = await self._redis.xpending_range(
                self.settings.stream,
                self.settings.group,
                min="-",
                max="+",
                count=1,
                consumername=self.settings.consumer,
            )
            if not pending:
                await self._redis.xgroup_delconsumer(
                    self.settings.stream, self.settings.group, self.settings.consumer
                )
        except (redis_errors.RedisError, OSError) as error:
            log.info("usage outbox: consumer not removed", extra={"error": type(error).__name__})
