"""The usage outbox consumer: drains the Redis stream that routers write usage events to.

Each entry's field ``e`` is a serialized ``UsageEvent``. A batch is written to the ledger in
one transaction and only then acknowledged (``XACK``) and deleted (``XDEL``), so an event is
never acknowledged unwritten; the ledger's idempotency makes redelivery harmless. Entries that
cannot be parsed or validated go to ``<stream>:dead``. Entries left pending by a consumer that
died are claimed with ``XAUTOCLAIM`` once idle long enough. When Postgres or Redis is down the
consumer logs, backs off and retries; it never exits until :meth:`OutboxConsumer.stop`.

While the stream has more, the next batch is read and prepared (parsed, checked, turned into
the ledger's arrays) while Postgres writes the current one; writes stay one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as redis
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram
from redis import exceptions as redis_errors

from switchboard.metering.v1 import metering_pb2
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Batch, Ledger, check_event

log = logging.getLogger(__name__)

BATCH_SECONDS = Histogram(
    "switchboard_usage_batch_seconds",
    "Time to write one batch of outbox entries to the ledger and acknowledge it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_LAG = Gauge(
    "switchboard_usage_outbox_lag",
    "Entries in the usage outbox stream not yet written and acknowledged.",
)
DEAD_LETTERED = Counter(
    "switchboard_usage_events_dead_lettered_total",
    "Outbox entries moved to the dead-letter stream because they were malformed.",
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

EVENT_FIELD = b"e"
# (entry id, fields); fields is None for an entry deleted while pending.
Entry = tuple[bytes, dict[bytes, bytes] | None]
# (entry id, serialized event, event) of an entry that parsed and checked.
Good = tuple[bytes, bytes, metering_pb2.UsageEvent]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch read from the stream: its entries parsed and checked, its events ready to write."""

    prepare_seconds: float  # parsing and checking it took
    gone: list[bytes]  # deleted while pending: only to acknowledge
    dead: list[tuple[bytes, bytes, str]]  # malformed: to the dead-letter stream
    good: list[Good]
    batch: Batch


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


def parse_entry(fields: dict[bytes, bytes]) -> tuple[metering_pb2.UsageEvent | None, str]:
    """The entry's event, or None and why (field names only, never payload contents)."""
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        return None, "missing field e"
    event = metering_pb2.UsageEvent()
    try:
        event.ParseFromString(raw)
    except DecodeError:
        return None, "not a serialized UsageEvent"
    problems = check_event(event, "event")
    if problems:
        return None, "invalid " + ", ".join(field for field, _ in problems)
    return event, ""


def _entries(response: Any) -> list[Entry]:
    """Entries of an XREADGROUP reply (RESP2 list or RESP3 dict) for our one stream."""
    streams = response.values() if isinstance(response, dict) else (s for _, s in response or ())
    return [(entry_id, fields) for items in streams for entry_id, fields in items]


class OutboxConsumer:
    """One consumer of the usage outbox consumer group, run as a background task."""

    def __init__(self, client: redis.Redis, ledger: Ledger, settings: OutboxSettings) -> None:
        self._redis = client
        self._ledger = ledger
        self.settings = settings
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Re-read our own pending entries (id 0) before new ones: set at start and after
        # any failure, so entries read but not acknowledged are retried, not forgotten.
        self._own_pending = True
        self._next_claim = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-outbox-consumer")
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

    async def _run(self) -> None:
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
        self._own_pending = True
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
            entries = await self._read("0")
            if entries:
                await self._handle(entries)
                return
            self._own_pending = False
        now = time.monotonic()
        if now >= self._next_claim:
            await self._claim_abandoned()
            OUTBOX_LAG.set(await self._redis.xlen(self.settings.stream))
            self._next_claim = now + self.settings.claim_interval_seconds
        entries = await self._read(">", block=True)
        if entries:
            await self._pipeline(self._prepare(entries))

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

    async def _read(self, from_id: str, *, block: bool = False) -> list[Entry]:
        response = await self._redis.xreadgroup(
            self.settings.group,
            self.settings.consumer,
            {self.settings.stream: from_id},
            count=self.settings.batch_size,
            block=self.settings.block_ms if block else None,
        )
        return _entries(response)

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
        good: list[Good] = []
        dead: list[tuple[bytes, bytes, str]] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if fields is None:
                gone.append(entry_id)
                continue
            event, reason = parse_entry(fields)
            raw = fields.get(EVENT_FIELD, b"")
            if event is None:
                dead.append((entry_id, raw, reason))
            else:
                good.append((entry_id, raw, event))
        batch = self._ledger.prepare([event for _, _, event in good], checked=True)
        return Prepared(time.perf_counter() - started, gone, dead, good, batch)

    async def _commit(self, prepared: Prepared) -> None:
        started = time.perf_counter()
        if prepared.dead:
            await self._dead_letter(prepared.dead)
        written = await self._write(prepared.good, prepared.batch)
        await self._ack([*prepared.gone, *written])
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
                await self._ledger.record([event], source="outbox", checked=True)
                written.append(entry_id)
            except DATA_ERRORS as error:
                sqlstate = getattr(error, "sqlstate", "?")
                await self._dead_letter([(entry_id, raw, f"refused by Postgres ({sqlstate})")])
        return written

    async def _dead_letter(self, dead: list[tuple[bytes, bytes, str]]) -> None:
        ids = [entry_id for entry_id, _, _ in dead]
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry_id, raw, reason in dead:
                pipe.xadd(
                    self.settings.dead_letter_stream, {"e": raw, "id": entry_id, "reason": reason}
                )
            pipe.xack(self.settings.stream, self.settings.group, *ids)
            pipe.xdel(self.settings.stream, *ids)
            await pipe.execute()
        DEAD_LETTERED.inc(len(dead))
        for entry_id, _, reason in dead:
            log.warning(
                "usage outbox: entry moved to the dead-letter stream",
                extra={"entry_id": entry_id.decode(), "reason": reason},
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
