"""Hands usage events to metering, durably, before the client sees the final message.

The normal path is one ``XADD`` to the Redis usage outbox, which metering drains in batches,
in a MULTI/EXEC that also deletes the generation's in-flight records (:mod:`.inflight`): a
crash leaves the records (metering's sweep then records the generation) or the event, never
neither. Each step is bounded, so the final message waits about a second at most:

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

import logging
import sqlite3
import time
from collections.abc import Mapping
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
from switchboard_core.liveness import generation_field
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

    async def _add(self, payload: bytes, field: str, router_id: str) -> None:
        if self._inflight is None:
            await self._redis.xadd(self._stream, {EVENT_FIELD: payload})
            return
        if router_id == self._inflight.router_id:
            await self._inflight.release(field)  # no write in progress brings them back
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._stream, {EVENT_FIELD: payload})
            self._inflight.forget(pipe, field, router_id)
            await pipe.execute()

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
