"""Bad bytes on the wire, through the real processes: every RPC of every service answers
undecodable payloads, invalid UTF-8 and NUL characters with INVALID_ARGUMENT (never UNKNOWN
or INTERNAL), the error stays small however many fields are wrong, and no process logs a
traceback (the stack fixture fails the module if one does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2
from switchboard_core.rpc_owners import RPC_OWNERS
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Stack
from tests.rpc_methods import Rpc, all_rpcs

pytestmark = [pytest.mark.e2e]

SERVERS = {
    "switchboard.router.v1.RouterService": "router",
    "switchboard.catalog.v1.CatalogService": "catalog",
    "switchboard.metering.v1.MeteringService": "metering",
}
OURS = [rpc for rpc in all_rpcs() if rpc.service.full_name in SERVERS]
GARBAGE = b"\xff\xff\xff\xff\x0f"  # a field with wire type 7: no protobuf parser accepts it
BAD_UTF8 = b"\x0a\x02\xc3\x28"  # field 1 (a string in every request below) holding invalid UTF-8


@pytest.fixture(scope="module")
async def api_secret(metering: metering_pb2_grpc.MeteringServiceAsyncStub) -> str:
    reply = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="hygiene"))
    return reply.secret


@pytest.fixture(scope="module")
async def owners(stack: Stack, api_secret: str) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """RPC path -> a channel with that RPC's owner's credentials."""
    opened: dict[str, grpc.aio.Channel] = {}
    for rpc in OURS:
        owner = RPC_OWNERS[rpc.path]
        server = SERVERS[rpc.service.full_name]
        if owner.scope is not None:
            opened[rpc.path] = stack.channel(server)  # the admin key holds every scope
        elif owner.tenant:
            opened[rpc.path] = stack.channel(server, bearer=api_secret)
        else:
            opened[rpc.path] = stack.channel(server, bearer="", as_=sorted(owner.services)[0])
    yield opened
    for channel in opened.values():
        await channel.close(None)


async def send_raw(channel: grpc.aio.Channel, rpc: Rpc, payload: bytes) -> grpc.aio.AioRpcError:
    parse = rpc.response_class().FromString
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if rpc.server_streaming:
            stream = channel.unary_stream(
                rpc.path, request_serializer=bytes, response_deserializer=parse
            )
            async for _ in stream(payload, timeout=10):
                pass
        else:
            unary = channel.unary_unary(
                rpc.path, request_serializer=bytes, response_deserializer=parse
            )
            await unary(payload, timeout=10)
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


@pytest.mark.parametrize("rpc", OURS, ids=lambda rpc: rpc.path)
async def test_undecodable_payloads_are_invalid_arguments(
    rpc: Rpc, owners: dict[str, grpc.aio.Channel]
) -> None:
    channel = owners[rpc.path]
    garbage = await send_raw(channel, rpc, GARBAGE)
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage.details()
    assert "not a valid" in (garbage.details() or "")
    if rpc.request().DESCRIPTOR.fields_by_number.get(1) is not None and (
        rpc.request().DESCRIPTOR.fields_by_number[1].type == 9  # TYPE_STRING
    ):
        utf8 = await send_raw(channel, rpc, BAD_UTF8)
        assert utf8.code() == grpc.StatusCode.INVALID_ARGUMENT, utf8.details()


async def test_the_undecodable_payloads_are_counted(stack: Stack) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for name in ("router", "catalog", "metering"):
            port = getattr(stack.ports, f"{name}_metrics")
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            counted = [
                line
                for line in text.splitlines()
                if line.startswith("switchboard_grpc_undecodable_requests_total{")
            ]
            assert counted, f"{name} exports no undecodable-request counter"
            assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) >= 1


async def test_nul_characters_are_refused_naming_the_field(
    owners: dict[str, grpc.aio.Channel],
) -> None:
    cases = {
        "/switchboard.metering.v1.MeteringService/CreateApiKey": (
            metering_pb2.CreateApiKeyRequest(account_id="acme", name="bad\x00name"),
            ["name"],
        ),
        "/switchboard.metering.v1.MeteringService/GetGeneration": (
            metering_pb2.GetGenerationRequest(generation_id="gen-\x00"),
            ["generation_id"],
        ),
        "/switchboard.router.v1.RouterService/CreateCompletion": (
            router_pb2.CreateCompletionRequest(
                model="switchboard/demo",
                messages=[
                    common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi"),
                    common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="a\x00b"),
                ],
                stop=["ok", "\x00"],
            ),
            ["messages[1].content", "stop[1]"],
        ),
    }
    by_path = {rpc.path: rpc for rpc in OURS}
    for path, (request, fields) in cases.items():
        error = await send_raw(owners[path], by_path[path], request.SerializeToString())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert sorted(violations(error)) == sorted(fields)


async def test_a_thousand_bad_messages_give_a_small_invalid_argument(
    owners: dict[str, grpc.aio.Channel],
) -> None:
    """Reported at most 20 fields and a count: the status fits the client's 8 KiB metadata
    limit, so the caller sees INVALID_ARGUMENT, not RESOURCE_EXHAUSTED."""
    path = "/switchboard.router.v1.RouterService/CreateCompletion"
    rpc = next(rpc for rpc in OURS if rpc.path == path)
    request = router_pb2.CreateCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=99, content="x" * 50) for _ in range(1000)],  # type: ignore[arg-type]
    )
    error = await send_raw(owners[path], rpc, request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = violations(error)
    assert 1 < len(fields) <= 21
    assert fields[0] == "messages[0].role"
    assert "more problems" in (error.details() or "")
    trailing: Any = error.trailing_metadata() or ()
    trailer = sum(len(key) + len(value) for key, value in trailing)
    assert trailer < 8 * 1024


async def test_health_watch_streams_on_every_server(stack: Stack) -> None:
    for name in ("router", "catalog", "metering"):
        async with stack.channel(name, bearer="", as_=OPERATOR) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            first = await call.read()
            call.cancel()
            assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_list_answers_on_every_server(stack: Stack) -> None:
    """The stock asyncio health servicer has no List: each call was INTERNAL and a logged
    traceback (found by tests/e2e/test_fuzz.py)."""
    for name, service in (("router", "RouterService"), ("metering", "MeteringService")):
        async with stack.channel(name, bearer="", as_=OPERATOR) as channel:
            listed = await health_pb2_grpc.HealthStub(channel).List(
                health_pb2.HealthListRequest(), timeout=10
            )
        assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
        full_name = f"switchboard.{name}.v1.{service}"
        assert listed.statuses[full_name].status == health_pb2.HealthCheckResponse.SERVING


async def test_an_undecodable_reflection_request_is_an_invalid_argument(stack: Stack) -> None:
    """Server reflection streams its requests, which the gRPC library decoded itself: garbage
    was UNKNOWN and a logged traceback (found by tests/e2e/test_fuzz.py)."""
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    for name in ("router", "catalog", "metering"):
        async with stack.channel(name, bearer="", as_=OPERATOR) as channel:
            call = channel.stream_stream(
                path, request_serializer=bytes, response_deserializer=bytes
            )(iter([GARBAGE]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
