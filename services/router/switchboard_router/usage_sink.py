"""Hands usage events to metering, durably, before the client sees the final message.

The normal path is one ``XADD`` to the Redis usage outbox, which metering drains in batches.
If Redis cannot take it, the event goes straight to metering's ``RecordUsage`` (idempotent on
generation id). Only when both fail does the caller get an error.
"""

from __future__ import annotations

import logging

import grpc
import redis.asyncio as redis
from redis.exceptions import RedisError

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.errors import Unavailable
from switchboard_router.metrics import USAGE_SINK_FALLBACKS

log = logging.getLogger(__name__)

FIELD = b"e"


class UsageSink:
    def __init__(self, client: redis.Redis, stream: str, metering: grpc.aio.Channel) -> None:
        self._redis = client
        self._stream = stream
        self._metering = metering_pb2_grpc.MeteringServiceStub(metering)

    async def publish(self, event: metering_pb2.UsageEvent) -> None:
        payload = event.SerializeToString()
        try:
            await self._redis.xadd(self._stream, {FIELD: payload})
            return
        except RedisError as error:
            log.warning("usage outbox unavailable", extra={"error": type(error).__name__})
        USAGE_SINK_FALLBACKS.inc()
        try:
            await self._metering.RecordUsage(
                metering_pb2.RecordUsageRequest(events=[event]), timeout=5.0
            )
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
