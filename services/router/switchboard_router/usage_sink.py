"""Hands usage events to metering, durably, before the client sees the final message.

The normal path is one ``XADD`` to the Redis usage outbox, which metering drains in batches,
in a MULTI/EXEC that also deletes the generation's in-flight records (:mod:`.inflight`): a
crash leaves the records (metering's sweep then records the generation) or the event, never
neither. If Redis cannot take it, the event goes straight to metering's ``RecordUsage``
(idempotent on generation id) and the records are deleted later. Only when both fail does the
caller get an error; the records then stay, so the generation is recorded (as FAILED) when
this router is swept.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
import redis.asyncio as redis
from redis.exceptions import RedisError

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.errors import Unavailable
from switchboard_core.liveness import generation_field
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_router.metrics import USAGE_SINK_FALLBACKS

if TYPE_CHECKING:
    from switchboard_router.inflight import InFlight

log = logging.getLogger(__name__)


class UsageSink:
    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        metering: grpc.aio.Channel,
        inflight: InFlight | None = None,
    ) -> None:
        self._redis = client
        self._stream = stream
        self._metering = metering_pb2_grpc.MeteringServiceStub(metering)
        self._inflight = inflight

    async def _add(self, payload: bytes, field: str) -> None:
        if self._inflight is None:
            await self._redis.xadd(self._stream, {EVENT_FIELD: payload})
            return
        await self._inflight.release(field)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._stream, {EVENT_FIELD: payload})
            self._inflight.forget(pipe, field)
            await pipe.execute()

    async def publish(self, event: metering_pb2.UsageEvent) -> None:
        payload = event.SerializeToString()
        field = generation_field(event.generation_id, event.attempt)
        try:
            await self._add(payload, field)
            return
        except RedisError as error:
            log.warning("usage outbox unavailable", extra={"error": type(error).__name__})
        USAGE_SINK_FALLBACKS.inc()
        try:
            await self._metering.RecordUsage(
                metering_pb2.RecordUsageRequest(events=[event]), timeout=5.0
            )
            if self._inflight is not None:
                self._inflight.forget_later(field)
        except grpc.aio.AioRpcError as error:
            log.error(
                "usage could not be recorded",
                extra={"generation_id": event.generation_id, "grpc_code": error.code().name},
            )
            raise Unavailable(
                "usage could not be recorded; the generation is not billed",
                reason="USAGE_NOT_RECORDED",
                metadata={"generation_id": event.generation_id},
                retry_after_seconds=1.0,
            ) from None
