"""The metering server as a whole, and the harness the other metering tests share.

``running_metering`` starts the real server in process (port 0) on the session's Postgres
database and Redis, with a usage stream of its own under the session's key prefix, serving
mutual TLS. ``stub`` calls it as an operator with every scope; ``router`` as the router service.
It watches no catalog unless given ``catalog_addr``: usage costs then go unverified (accepted
and counted, see switchboard_metering.cost_check), which is what lets these tests record events
with made-up costs; tests/integration/test_ledger_prices.py runs it against a real catalog.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import redis.asyncio as redis
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.config import ServerConfig
from switchboard_core.server import GrpcServer
from switchboard_metering.app import SERVICE_NAME, create_app
from switchboard_metering.config import MeteringConfig, OutboxSettings
from tests.secure import admin_key, channel_as, operator_channel, tls_for


@dataclass
class Metering:
    server: GrpcServer
    stub: metering_pb2_grpc.MeteringServiceAsyncStub
    config: MeteringConfig
    channel: grpc.aio.Channel
    # Calls as the router service does (VerifyApiKey, RecordUsage).
    router: metering_pb2_grpc.MeteringServiceAsyncStub
    # The operator key (every scope) ``stub`` sends.
    admin_key: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def outbox(self) -> OutboxSettings:
        return self.config.outbox


def test_settings(redis_prefix: str, **overrides: Any) -> OutboxSettings:
    """Outbox settings for a stream no other test uses, tuned to be quick."""
    values: dict[str, Any] = {
        "stream": f"{redis_prefix}usage:{uuid.uuid4().hex[:8]}",
        "block_ms": 50,
        "claim_interval_seconds": 0.2,
        "max_backoff_seconds": 0.2,
    }
    values.update(overrides)
    return OutboxSettings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]


@asynccontextmanager
async def running_metering(
    database_url: str, redis_url: str, outbox: OutboxSettings, **overrides: Any
) -> AsyncIterator[Metering]:
    """``overrides`` set other config fields (``catalog_addr``...)."""
    config = MeteringConfig(
        server=ServerConfig(service="metering", shutdown_grace_seconds=0, tls=tls_for("metering")),
        database_url=database_url,
        redis_url=redis_url,
        outbox=outbox,
        budget_prefix=outbox.stream + ":budget:",
        retention_days=0,  # tests record events dated years ago
        max_event_age_days=3650,  # ... which the ledger accepts only when told to
        **overrides,
    )
    server = await create_app(config)
    await server.start(with_metrics=False)
    address = f"127.0.0.1:{server.port}"
    key = await admin_key(database_url)
    channel = operator_channel(address, key)
    as_router = channel_as(address, "router")
    try:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        router = metering_pb2_grpc.MeteringServiceStub(as_router)
        yield Metering(
            server=server, stub=stub, config=config, channel=channel, router=router, admin_key=key
        )
    finally:
        await channel.close(None)
        await as_router.close(None)
        await server.stop(0)


def usage_event(
    key_id: str,
    generation_id: str | None = None,
    *,
    when: datetime | None = None,
    model: str = "demo/echo",
    provider: str = "demo",
    cost: str = "0.00123",
    prompt: int = 10,
    completion: int = 5,
) -> metering_pb2.UsageEvent:
    event = metering_pb2.UsageEvent(
        generation_id=generation_id or f"gen-{uuid.uuid4().hex}",
        key_id=key_id,
        account_id="acct",
        model_id=model,
        provider_id=provider,
        endpoint_id=f"{provider}:{model}",
        upstream_model=model.split("/")[-1],
        usage=common_pb2.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=prompt // 2,
            reasoning_tokens=completion // 2,
            cache_write_tokens=1,
        ),
        cost_usd=cost,
        finish_reason=common_pb2.FINISH_REASON_STOP,
        native_finish_reason="stop",
        status=metering_pb2.GENERATION_STATUS_COMPLETED,
        latency_ms=1200,
        time_to_first_token_ms=150,
        streamed=True,
    )
    event.create_time.FromDatetime(when or datetime.now(UTC))
    return event


def new_key_id() -> str:
    return f"key_{uuid.uuid4().hex[:16]}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named in the error's ``BadRequest`` detail."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


async def test_serves_health_and_stops_cleanly(
    database_url: str, redis_url: str, redis_prefix: str, redis_client: redis.Redis
) -> None:
    outbox = test_settings(redis_prefix)
    async with running_metering(database_url, redis_url, outbox) as metering:
        health = health_pb2_grpc.HealthStub(metering.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async def group_has_consumer() -> bool:
            consumers = await redis_client.xinfo_consumers(outbox.stream, outbox.group)
            return any(c["name"].decode() == outbox.consumer for c in consumers)

        await eventually(group_has_consumer)
        started = time.monotonic()
    assert time.monotonic() - started < 3
    # A consumer that stops with nothing pending leaves the group.
    assert not await group_has_consumer()


async def test_migrations_create_the_tables(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)):
        conn = await asyncpg.connect(database_url)
        try:
            names = {
                row["table_name"]
                for row in await conn.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            }
        finally:
            await conn.close()
    assert {"accounts", "api_keys", "generations", "usage_rollups"} <= names
