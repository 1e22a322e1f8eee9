"""The standard services of every server, through the real processes: server reflection in
both versions (v1, which current tools ask for first, and v1alpha), and a health status that
follows catalog's and metering's database (their Postgres link through a fault proxy) and
turns NOT_SERVING while a server drains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard_core.reflection import V1_FILE, register_v1_descriptor
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Stack
from tests.faults.links import postgres_proxy, through
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = {
    "router": "switchboard.router.v1.RouterService",
    "catalog": "switchboard.catalog.v1.CatalogService",
    "metering": "switchboard.metering.v1.MeteringService",
}
PROBE = {
    "SWITCHBOARD_HEALTH_PROBE_SECONDS": "0.2",
    "SWITCHBOARD_HEALTH_PROBE_TIMEOUT_SECONDS": "0.5",
}
# asyncpg's pool logs a traceback when it cannot refill while the link is refused.
ALLOWED_TRACEBACK_LOGGERS = ("asyncpg.pool",)


@pytest.fixture(scope="module")
def pg_link(database_url: str) -> Iterator[FaultProxy]:
    proxy = postgres_proxy(database_url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def stack_service_env(pg_link: FaultProxy, database_url: str) -> dict[str, dict[str, str]]:
    proxied = {"DATABASE_URL": through(pg_link, database_url), **PROBE}
    return {"catalog": proxied, "metering": dict(proxied)}


def reflection_types(version: str) -> tuple[type[Any], type[Any]]:
    register_v1_descriptor()
    pool = descriptor_pool.Default()
    package = f"grpc.reflection.{version}"
    return (
        GetMessageClass(pool.FindMessageTypeByName(f"{package}.ServerReflectionRequest")),
        GetMessageClass(pool.FindMessageTypeByName(f"{package}.ServerReflectionResponse")),
    )


async def reflect(channel: grpc.aio.Channel, version: str, requests: list[Any]) -> list[Any]:
    request_type, response_type = reflection_types(version)
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )(iter([request_type(**r) for r in requests]), timeout=10)
    return [reply async for reply in call]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_is_served_in_both_versions(stack: Stack, version: str) -> None:
    for name, service in SERVICES.items():
        async with stack.channel(name, bearer="", as_=OPERATOR) as channel:
            listed, described, itself = await reflect(
                channel,
                version,
                [
                    {"list_services": ""},
                    {"file_containing_symbol": service},
                    {"file_containing_symbol": "grpc.reflection.v1.ServerReflection"},
                ],
            )
        names = {s.name for s in listed.list_services_response.service}
        assert {service, "grpc.health.v1.Health"} <= names, name
        assert {
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names, name
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in described.file_descriptor_response.file_descriptor_proto
        ]
        assert any(service.rsplit(".", 1)[1] in {s.name for s in f.service} for f in files)
        own = descriptor_pb2.FileDescriptorProto.FromString(
            itself.file_descriptor_response.file_descriptor_proto[0]
        )
        assert own.name == V1_FILE and own.package == "grpc.reflection.v1"


async def watch_statuses(stack: Stack, name: str) -> Any:
    channel = stack.channel(name, bearer="", as_=OPERATOR)
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    return channel, call


async def test_catalog_and_metering_say_not_serving_while_their_database_is_gone(
    stack: Stack, pg_link: FaultProxy
) -> None:
    watches = {name: await watch_statuses(stack, name) for name in ("catalog", "metering")}
    try:
        for name, (_, call) in watches.items():
            assert (await call.read()).status == SERVING, name
        for fault in ("blackhole", "refuse"):
            pg_link.set(fault)
            started = time.monotonic()
            for name, (_, call) in watches.items():
                assert (await asyncio.wait_for(call.read(), 10)).status == NOT_SERVING, name
            assert time.monotonic() - started < 5
            pg_link.set("reset")  # the links a blackhole stalled
            pg_link.set("pass")
            for name, (_, call) in watches.items():
                assert (await asyncio.wait_for(call.read(), 15)).status == SERVING, name
    finally:
        pg_link.set("pass")
        for channel, call in watches.values():
            call.cancel()
            await channel.close(None)


async def test_a_draining_server_says_not_serving(stack: Stack) -> None:
    """Last in the module: it stops the router."""
    channel, call = await watch_statuses(stack, "router")
    try:
        assert (await call.read()).status == SERVING
        stopping = asyncio.get_running_loop().run_in_executor(None, stack.stop_process, "router")
        started = time.monotonic()
        assert (await asyncio.wait_for(call.read(), 10)).status == NOT_SERVING
        assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]  # the watch ends: it holds up no drain
        assert await call.code() == grpc.StatusCode.OK
        assert await stopping == 0
        assert time.monotonic() - started < 5  # under the stack's 10 s grace
    finally:
        await channel.close(None)
