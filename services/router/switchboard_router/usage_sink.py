"""Hands usage events to metering, durably, before the client sees the final message.

The normal path is one ``XADD`` to the Redis usage outbox, which metering drains in batches,
in a script that also deletes the generation's in-flight records, atomically
(:meth:`switchboard_core.liveness.Liveness.publish`): a crash leaves the records (metering's
sweep then records the generation) or the event, never neither. Events are group-committed
(:class:`_GroupCommit`): one write is in flight at a time, the first event goes at once, and
those that end while it is in flight go together in the next, so a busy router pays one round
trip (and redis-py's client work) per write rather than per event, and no event waits for a
batch to fill. Each event's wait is its own, bounded as below, and an event whose write failed
takes the next step on its own. Each step is bounded, so the final message waits about a
second at most:

1. the outbox, within the Redis deadline (``SWITCHBOARD_REDIS_TIMEOUT_SECONDS``; skipped at
   once while Redis is known to be down);
2. metering's ``RecordUsage`` (idempotent on generation id), within
   ``SWITCHBOARD_USAGE_FALLBACK_SECONDS``; the records are deleted later;
3. the local durable spool (:mod:`.spool`, which says why no event is lost or counted twice);
   the records stay until the spooled event is delivered.

Only when all three fail does the client get ``USAGE_NOT_RECORDED``; the records then stay,
so the generation is recorded (as FAILED) when this router is swept.

When tracing is on, publishing is a PRODUCER span (``usage publish``, a child of the
completion's) whose traceparent the event carries (``UsageEvent.trace_parent``): metering's
ledger write becomes its child.

**The wire format lives here too**, in one room: :func:`usage_event` builds the
``UsageEvent`` metering folds into the ledger from a :class:`~.generation.Generation`, with the
typed converters the public API's messages share (:func:`usage_message`, :func:`timestamp`,
:func:`finish_reason`) and the status names metrics use (:data:`STATUS_NAMES`). The canonical
enums become proto enums through tables built once at import (a missing name fails then, not
on a request), so no cast is left unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, TypeAlias

import grpc
import redis.asyncio as redis
from google.protobuf import timestamp_pb2
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core import tracing
from switchboard_core.errors import Unavailable
from switchboard_core.liveness import Delivery, generation_field
from switchboard_core.money import format_usd
from switchboard_core.pricing import USAGE_COUNTS
from switchboard_core.redis_client import RedisDeadline
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_router.canonical import Finish, FinishEvent, UsageReport
from switchboard_router.metrics import USAGE_SINK_FALLBACKS
from switchboard_router.usage_estimate import image_count

if TYPE_CHECKING:
    from switchboard_router.generation import Generation
    from switchboard_router.inflight import InFlight
    from switchboard_router.spool import Spool

log = logging.getLogger(__name__)

SPOOL_KIND = "usage"
# At most this many events per outbox write (one script: Redis runs it without interleaving
# other clients' commands, so a group stays short); more wait for the next write.
MAX_GROUP = 128
DEFAULT_FALLBACK_SECONDS = 0.5

# --- the wire format -------------------------------------------------------------------------

Status: TypeAlias = metering_pb2.GenerationStatus.ValueType
COMPLETED: Status = metering_pb2.GENERATION_STATUS_COMPLETED
CANCELLED: Status = metering_pb2.GENERATION_STATUS_CANCELLED
FAILED: Status = metering_pb2.GENERATION_STATUS_FAILED

# A generation's status as metrics label it.
STATUS_NAMES: Mapping[Status, str] = {
    COMPLETED: "completed",
    CANCELLED: "cancelled",
    FAILED: "failed",
}

# The canonical finish reasons as the proto's, by name: ``Finish.STOP`` is
# ``FINISH_REASON_STOP`` (a canonical reason the proto lacks fails at import).
_FINISH_REASONS: Mapping[Finish, common_pb2.FinishReason.ValueType] = {
    reason: common_pb2.FinishReason.Value(f"FINISH_REASON_{reason.name}") for reason in Finish
}


def finish_reason(reason: Finish) -> common_pb2.FinishReason.ValueType:
    """``reason`` as the proto's ``FinishReason``."""
    return _FINISH_REASONS[reason]


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A wall-clock time in Unix seconds as a ``Timestamp`` (to the nanosecond)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def usage_message(usage: UsageReport, images: int = 0) -> common_pb2.Usage:
    """``usage`` as the ledger keeps it, with the request's ``images``."""
    return common_pb2.Usage(
        **{name: getattr(usage, name) for name in USAGE_COUNTS},
        estimated=usage.estimated,
        input_images=images,
    )


def usage_event(
    generation: Generation,
    status: Status,
    usage: UsageReport,
    cost: Decimal,
    finish: FinishEvent,
) -> metering_pb2.UsageEvent:
    """The ledger event of ``generation``, ended with ``status`` and ``finish``, having used
    ``usage`` at ``cost``; its latency runs to now."""
    now = time.monotonic()
    route = generation.route
    first = generation.first_event_at
    return metering_pb2.UsageEvent(
        generation_id=generation.id,
        attempt=generation.attempt,
        key_id=generation.caller.key_id,
        account_id=generation.caller.account_id,
        model_id=route.model_id,
        provider_id=route.provider_id,
        endpoint_id=route.endpoint_id,
        upstream_model=route.upstream_model,
        usage=usage_message(usage, image_count(generation.request)),
        cost_usd=format_usd(cost),
        finish_reason=_FINISH_REASONS[finish.reason],
        native_finish_reason=finish.native_reason,
        status=status,
        create_time=timestamp(generation.create_time),
        latency_ms=int((now - generation.started) * 1000),
        time_to_first_token_ms=int((first - generation.started) * 1000) if first else 0,
        streamed=generation.streamed,
        price_version=route.price_version,
        trace_parent=generation.trace_parent,
    )


# --- the sink --------------------------------------------------------------------------------


def _envelope(router_id: str, field: str, payload: bytes) -> bytes:
    """A spooled event: the router whose records hold it, their field, then the event."""
    return f"{router_id or '-'} {field}\n".encode() + payload


def _open(body: bytes) -> tuple[str, str, bytes]:
    header, _, payload = body.partition(b"\n")
    router_id, _, field = header.decode().partition(" ")
    return ("" if router_id == "-" else router_id), field, payload


class _GroupCommit:
    """Writes to the outbox, one at a time: a delivery arriving while none is in flight is
    written at once, in its caller's task (bounded by the caller's deadline, as any call);
    those arriving meanwhile queue, and go together in one write as soon as it ends (in a task
    of their own, each write bounded by ``seconds``). Each caller waits for its own delivery's
    write and gets its outcome; a caller that stops waiting (its deadline) before its group is
    written drops its delivery from the group."""

    def __init__(self, write: Callable[[list[Delivery]], Awaitable[None]], seconds: float) -> None:
        self._write = write
        self._seconds = seconds
        self._busy = False  # a write is in flight, or queued deliveries are being written
        self._queue: list[tuple[Delivery, asyncio.Future[None]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, delivery: Delivery) -> None:
        """Return once ``delivery`` is written, or raise what its write raised."""
        if self._busy:
            done = asyncio.get_running_loop().create_future()
            self._queue.append((delivery, done))
            await done  # cancelled with the caller: then its delivery is not written
            return
        self._busy = True
        try:
            await self._write([delivery])
        finally:
            if self._queue:
                self._drainer = asyncio.create_task(self._drain(), name="usage-group-commit")
            else:
                self._busy = False

    async def _drain(self) -> None:
        """Write what queued up, a group per write, until nothing is left."""
        try:
            while group := [(d, done) for d, done in self._queue if not done.done()]:
                group, rest = group[:MAX_GROUP], group[MAX_GROUP:]
                self._queue = rest
                try:
                    async with asyncio.timeout(self._seconds):
                        await self._write([delivery for delivery, _ in group])
                except asyncio.CancelledError:
                    for _, done in group:
                        done.cancel()
                    raise
                except Exception as error:
                    for _, done in group:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
        finally:
            for _, done in self._queue:  # only when cancelled: never written
                done.cancel()
            self._queue, self._busy, self._drainer = [], False, None


class UsageSink:
    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        metering: grpc.aio.Channel,
        inflight: InFlight | None = None,
        *,
        deadline: RedisDeadline | None = None,
        fallback_seconds: float = DEFAULT_FALLBACK_SECONDS,
        spool: Spool | None = None,
    ) -> None:
        self._redis = client
        self._stream = stream
        self._metering = metering_pb2_grpc.MeteringServiceStub(metering)
        self._inflight = inflight
        self._deadline = deadline or RedisDeadline()
        self._fallback_seconds = fallback_seconds
        self._spool = spool
        self._group = _GroupCommit(self._write, self._deadline.seconds)

    async def _write(self, deliveries: list[Delivery]) -> None:
        if self._inflight is not None:
            await self._inflight.publish(deliveries)
            return
        async with self._redis.pipeline(transaction=False) as pipe:  # no records to delete
            for delivery in deliveries:
                pipe.xadd(self._stream, {EVENT_FIELD: delivery.payload})
            await pipe.execute()

    async def _add(self, payload: bytes, field: str, router_id: str) -> None:
        if self._inflight is not None:
            if router_id == self._inflight.router_id:
                await self._inflight.release(field)  # no write in progress brings them back
            router_id = router_id or self._inflight.router_id
        await self._group.submit(Delivery(payload, router_id, field))

    async def _to_outbox(self, payload: bytes, field: str, router_id: str, operation: str) -> bool:
        try:
            await self._deadline.run(operation, lambda: self._add(payload, field, router_id))
        except (RedisError, OSError) as error:
            log.warning("usage outbox unavailable", extra={"error": type(error).__name__})
            return False
        return True

    async def _to_metering(self, event: metering_pb2.UsageEvent) -> bool:
        try:
            await self._metering.RecordUsage(
                metering_pb2.RecordUsageRequest(events=[event]), timeout=self._fallback_seconds
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "usage not recorded by metering",
                extra={"generation_id": event.generation_id, "grpc_code": error.code().name},
            )
            return False
        return True

    def _forget_later(self, field: str, router_id: str) -> None:
        """The event went straight to metering: its records go with this router's next
        write (another process's are swept, and the sweep's event is then the duplicate)."""
        if self._inflight is not None and router_id == self._inflight.router_id:
            self._inflight.forget_later(field)

    async def publish(self, event: metering_pb2.UsageEvent) -> None:
        """Make ``event`` durable (the outbox, else RecordUsage, else the spool) or raise
        ``USAGE_NOT_RECORDED``; in a PRODUCER span when tracing is on."""
        span = tracing.start_span(
            "usage publish",
            SpanKind.PRODUCER,
            {
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.destination.name": tracing.bounded(self._stream),
                "gen_ai.response.id": event.generation_id,
            },
        )
        if span is None:
            return await self._publish(event)
        event.trace_parent = tracing.traceparent_of(span) or event.trace_parent
        token = tracing.attach(span)  # a RecordUsage fallback carries it too
        try:
            await self._publish(event)
        except BaseException as error:
            tracing.fail(span, error)
            raise
        finally:
            span.end()
            tracing.detach(token)

    async def _publish(self, event: metering_pb2.UsageEvent) -> None:
        payload = event.SerializeToString()
        field = generation_field(event.generation_id, event.attempt)
        router_id = ""
        if self._inflight is not None:
            router_id = self._inflight.router_id
            self._inflight.untrack(field)
        if await self._to_outbox(payload, field, router_id, "usage"):
            return
        USAGE_SINK_FALLBACKS.inc()
        if await self._to_metering(event):
            self._forget_later(field, router_id)
            return
        if self._spool is not None:
            try:
                await self._spool.put(SPOOL_KIND, _envelope(router_id, field, payload))
            except (sqlite3.Error, OSError) as error:
                log.error("usage spool failed", extra={"error": type(error).__name__})
            else:
                log.warning("usage event spooled", extra={"generation_id": event.generation_id})
                return
        log.error("usage could not be recorded", extra={"generation_id": event.generation_id})
        raise Unavailable(
            "usage could not be recorded; the generation is not billed",
            reason="USAGE_NOT_RECORDED",
            metadata={"generation_id": event.generation_id},
            retry_after_seconds=1.0,
        )

    async def deliver_spooled(self, body: bytes) -> bool:
        """Deliver a spooled event (:class:`.spool.Replayer`): to the outbox with the deletion
        of its records, else to ``RecordUsage``."""
        router_id, field, payload = _open(body)
        if await self._to_outbox(payload, field, router_id, "replay"):
            return True
        if await self._to_metering(metering_pb2.UsageEvent.FromString(payload)):
            self._forget_later(field, router_id)
            return True
        return False
