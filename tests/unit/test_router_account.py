"""The router's account reads wait on metering a bounded time: metering slow or unreachable is
UNAVAILABLE with RetryInfo, and the caller's own key is what goes to metering."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2
from switchboard_core.auth import TenantPrincipal, principal_var
from switchboard_core.errors import Unavailable
from switchboard_core.rpc_owners import FORWARDED_AUTHORIZATION
from switchboard_router.account import AccountReads
from switchboard_router.auth import Caller
from switchboard_router.catalog_cache import CatalogCache

SECRET = "sk-sb-v1-" + "s" * 43


class FakeContext:
    """What the handlers read of a grpc.aio servicer context."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {SECRET}"),)

    def time_remaining(self) -> float | None:
        return self.remaining


class SlowMetering(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self) -> None:
        self.forwarded: list[str] = []

    async def GetGeneration(self, request: Any, context: Any) -> Any:
        self.forwarded.append(dict(context.invocation_metadata())[FORWARDED_AUTHORIZATION])
        await asyncio.sleep(10)
        return metering_pb2.GetGenerationResponse()


@pytest.fixture
def tenant() -> Iterator[None]:
    caller = Caller(key_id="key_1", account_id="acme")
    token = principal_var.set(TenantPrincipal(key_id="key_1", account_id="acme", detail=caller))
    yield
    principal_var.reset(token)


@pytest.fixture
async def slow() -> AsyncIterator[tuple[str, SlowMetering]]:
    server = grpc.aio.server()
    servicer = SlowMetering()  # type: ignore[abstract]
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _generation(address: str, context: FakeContext, timeout: float) -> Unavailable:
    async with grpc.aio.insecure_channel(address) as channel:
        reads = AccountReads(channel, CatalogCache(channel), timeout_seconds=timeout)
        request = account_pb2.GetGenerationRequest(generation_id="gen-1")
        with pytest.raises(Unavailable) as refused:
            await reads.get_generation(request, context)  # type: ignore[arg-type]
    return refused.value


@pytest.mark.usefixtures("tenant")
async def test_metering_unreachable_is_unavailable_with_retry_info() -> None:
    error = await _generation(f"127.0.0.1:{_closed_port()}", FakeContext(), timeout=5.0)
    assert error.reason == "METERING_UNAVAILABLE"
    assert error.retry_after_seconds == 1.0


@pytest.mark.usefixtures("tenant")
async def test_a_slow_metering_is_given_up_on_and_gets_the_callers_own_key(
    slow: tuple[str, SlowMetering],
) -> None:
    address, servicer = slow
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await _generation(address, FakeContext(), timeout=0.3)
    assert error.reason == "METERING_UNAVAILABLE"
    assert loop.time() - started < 2
    # The client's own deadline, when nearer, bounds the wait too.
    started = loop.time()
    await _generation(address, FakeContext(remaining=0.2), timeout=30.0)
    assert loop.time() - started < 2
    assert servicer.forwarded == [f"Bearer {SECRET}"] * 2
