"""Channels between services: keepalive that the servers accept (no GOAWAY too_many_pings on
an idle connection), that notices a silent peer in seconds, and a router key check that never
waits on a silent metering for long."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from switchboard_core.channels import (
    CHANNEL_OPTIONS,
    KEEPALIVE_SECONDS,
    KEEPALIVE_TIMEOUT_SECONDS,
)
from switchboard_core.errors import Unavailable
from switchboard_core.server import SERVER_OPTIONS
from switchboard_router.auth import KeyVerifier
from tests.faults.proxy import FaultProxy


@pytest.fixture
async def server() -> AsyncIterator[int]:
    """A gRPC server with the services' options, serving health."""
    grpc_server = grpc.aio.server(options=SERVER_OPTIONS)
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing in the stubs
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        yield port
    finally:
        await grpc_server.stop(0)


async def _check(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)


async def _states_during(channel: grpc.aio.Channel, seconds: float) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(channel.get_state().name)
        await asyncio.sleep(0.2)
    return seen


async def test_an_idle_channel_keeps_its_connection_over_many_keepalive_periods(
    server: int,
) -> None:
    """The clients ping every KEEPALIVE_SECONDS with no calls; the servers must accept it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server}", options=CHANNEL_OPTIONS) as channel:
        await _check(channel)
        # A GOAWAY too_many_pings would take the channel out of READY (to IDLE).
        assert await _states_during(channel, 3 * KEEPALIVE_SECONDS + 1.5) == {"READY"}
        await _check(channel)
        assert channel.get_state() == grpc.ChannelConnectivity.READY


async def test_a_silent_peer_is_noticed_within_the_keepalive_interval(server: int) -> None:
    with FaultProxy(("127.0.0.1", server)) as proxy:
        async with grpc.aio.insecure_channel(proxy.address, options=CHANNEL_OPTIONS) as channel:
            await _check(channel)
            proxy.set("blackhole")
            started = time.monotonic()
            while channel.get_state() == grpc.ChannelConnectivity.READY:
                assert (
                    time.monotonic() - started < KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS + 2
                )
                await asyncio.sleep(0.1)
            noticed = time.monotonic() - started
            proxy.set("pass")
            # Back within the connect timeout (the attempt the blackhole caught is given up).
            started = time.monotonic()
            while True:
                try:
                    await _check(channel)
                    break
                except grpc.aio.AioRpcError:
                    assert time.monotonic() - started < 6
                    await asyncio.sleep(0.1)
    assert noticed <= KEEPALIVE_SECONDS + KEEPALIVE_TIMEOUT_SECONDS + 2


async def test_a_never_seen_key_fails_within_a_second_when_metering_is_silent(
    server: int,
) -> None:
    with FaultProxy(("127.0.0.1", server)) as proxy:
        proxy.set("blackhole")
        async with grpc.aio.insecure_channel(proxy.address, options=CHANNEL_OPTIONS) as channel:
            verifier = KeyVerifier(channel, 30.0, stale_seconds=600.0, timeout_seconds=0.8)
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                await verifier.verify_secret("sk-sb-v1-" + "n" * 43)
            elapsed = time.monotonic() - started
    assert raised.value.reason == "KEY_SERVICE_UNAVAILABLE"
    assert raised.value.retry_after_seconds is not None
    assert elapsed < 1.5
