"""The serving status follows the database, and clients checking health (a channel with
``healthCheckConfig`` and ``round_robin``) follow the status: real servers, real channels,
Postgres through a fault proxy.

A server whose Postgres goes silent says NOT_SERVING within a probe interval and timeout; a
client channel checking health then fails its calls UNAVAILABLE rather than sending work
there, or sends it to another replica; the database back, the server says SERVING again and
gets its share of calls. Draining says NOT_SERVING before the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from switchboard_core.auth import Authenticator
from switchboard_core.config import ServerConfig
from switchboard_core.db import create_pool
from switchboard_core.errors import Unavailable
from switchboard_core.health import database_probe
from switchboard_core.server import GrpcServer, Registration
from switchboard_core.tls import TlsConfig
from switchboard_devstack.pki import DevPki
from tests.faults.links import postgres_proxy, through
from tests.faults.proxy import FaultProxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBE_SECONDS, PROBE_TIMEOUT_SECONDS = 0.2, 0.3
# Client-side health checking (gRPC proposal A17): the channel watches each backend's
# Health/Watch for "" and sends calls only to backends that say SERVING.
HEALTH_CHECKED = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


@asynccontextmanager
async def serving(
    name: str, database_url: str, *, tls: TlsConfig | None = None, health_port: int | None = None
) -> AsyncIterator[GrpcServer]:
    """A server whose health follows ``database_url``'s Postgres; ``name`` is the one
    service it lists (Health/List tells the replicas apart)."""
    pool = await create_pool(database_url)
    config = ServerConfig(
        service=name,
        shutdown_grace_seconds=0,
        tls=tls or TlsConfig(plaintext=True),  # health and reflection only, on 127.0.0.1
        health_probe_seconds=PROBE_SECONDS,
        health_probe_timeout_seconds=PROBE_TIMEOUT_SECONDS,
        health_port=health_port,
    )
    server = GrpcServer(
        config=config,
        registrations=[Registration(add=lambda s, g: None, servicer=None, full_name=name)],
        authenticator=Authenticator(config.tls, verifier=None),  # type: ignore[arg-type]  # public RPCs only
        probes=[database_probe(pool)],
        on_stop=[pool.close],
    )
    await server.start(with_metrics=False)
    try:
        yield server
    finally:
        await server.stop(0)


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Seconds until ``check`` holds; fails the test past ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return int(reply.status)


def free_stuck_connections(proxy: FaultProxy) -> None:
    """Back from a blackhole: reset the links it stalled (as a real partition's end lets
    TCP keepalive do, slowly), then forward again."""
    proxy.set("reset")
    proxy.set("pass")


@pytest.fixture
def pg_proxy(database_url: str) -> Iterator[FaultProxy]:
    proxy = postgres_proxy(database_url)
    yield proxy
    proxy.stop()


async def test_watch_follows_the_database_and_draining(
    database_url: str, pg_proxy: FaultProxy
) -> None:
    async with (
        serving("test.Watched", through(pg_proxy, database_url)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="test.Watched"), timeout=30
        )
        assert (await watch.read()).status == SERVING
        pg_proxy.set("blackhole")
        started = time.monotonic()
        assert (await watch.read()).status == NOT_SERVING
        # Noticed within an interval and a probe timeout, and some slack for a busy host.
        assert time.monotonic() - started < PROBE_SECONDS + PROBE_TIMEOUT_SECONDS + 1.5
        free_stuck_connections(pg_proxy)
        assert (await watch.read()).status == SERVING
        pg_proxy.set("refuse")  # Postgres down rather than silent
        assert (await watch.read()).status == NOT_SERVING
        pg_proxy.set("pass")
        assert (await watch.read()).status == SERVING
        stopping = asyncio.create_task(server.stop(2))
        assert (await watch.read()).status == NOT_SERVING  # draining
        assert await watch.read() == grpc.aio.EOF  # type: ignore[attr-defined]  # then ends
        await stopping


async def test_a_health_checking_channel_fails_over_and_comes_back(
    database_url: str, pg_proxy: FaultProxy
) -> None:
    async with (
        serving("test.A", through(pg_proxy, database_url)) as a,
        serving("test.B", database_url) as b,
    ):
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        options = [("grpc.service_config", HEALTH_CHECKED)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def who_answers(calls: int) -> set[str]:
                seen: set[str] = set()
                for _ in range(calls):
                    reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
                    seen.update(name for name in reply.statuses if name.startswith("test."))
                return seen

            async def both() -> bool:
                return await who_answers(6) == {"test.A", "test.B"}

            await eventually(both, 5, "round robin over both replicas")
            pg_proxy.set("blackhole")
            await eventually(lambda: _is(status(a.port), NOT_SERVING), 5, "A NOT_SERVING")
            await asyncio.sleep(0.2)  # the channel's Watch on A streams the change
            assert await who_answers(20) == {"test.B"}  # every call went to B
            free_stuck_connections(pg_proxy)
            await eventually(both, 5, "A back in the rotation")


async def test_a_health_checking_channel_to_a_lone_unhealthy_server_is_unavailable(
    database_url: str, pg_proxy: FaultProxy
) -> None:
    async with serving("test.Lone", through(pg_proxy, database_url)) as server:
        options = [("grpc.service_config", HEALTH_CHECKED)]
        address = f"127.0.0.1:{server.port}"
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.List(health_pb2.HealthListRequest(), timeout=5)
            pg_proxy.set("refuse")
            await eventually(lambda: _is(status(server.port), NOT_SERVING), 5, "NOT_SERVING")
            await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.List(health_pb2.HealthListRequest(), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            pg_proxy.set("pass")
            await eventually(lambda: _is(status(server.port), SERVING), 5, "SERVING again")
            await asyncio.sleep(0.2)
            await stub.List(health_pb2.HealthListRequest(), timeout=5)


async def test_the_database_probe_is_bounded_when_postgres_is_silent(
    database_url: str, pg_proxy: FaultProxy
) -> None:
    pool = await create_pool(through(pg_proxy, database_url))
    probe = database_probe(pool)

    async def passes() -> bool:
        try:
            await probe.check(1.0)
        except Unavailable:
            return False
        return True

    try:
        assert await passes()
        pg_proxy.set("blackhole")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="database is not answering"):
            await probe.check(0.3)
        assert time.monotonic() - started < 0.6
        free_stuck_connections(pg_proxy)
        # The first check may meet a connection the reset broke; a later one reconnects.
        await eventually(passes, 5, "the probe passing again")
    finally:
        free_stuck_connections(pg_proxy)
        await pool.close()


async def _is(value: Awaitable[int], expected: int) -> bool:
    try:
        return await value == expected
    except grpc.aio.AioRpcError:
        return False


async def test_a_plaintext_health_port_tells_the_tls_ports_status_and_nothing_else(
    database_url: str, pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Kubelet's ``grpc:`` probes speak no TLS: SWITCHBOARD_HEALTH_PORT serves them the same
    status in plaintext, and only health (reflection, which names every RPC, is not there)."""
    pki = DevPki.ensure(tmp_path)
    async with serving(
        "test.Probed", through(pg_proxy, database_url), tls=pki.tls("catalog"), health_port=0
    ) as server:
        assert server.health_port not in (0, server.port)
        assert await status(server.health_port) == SERVING
        pg_proxy.set("refuse")
        await eventually(
            lambda: _is(status(server.health_port), NOT_SERVING), 5, "NOT_SERVING on it"
        )
        pg_proxy.set("pass")
        await eventually(lambda: _is(status(server.health_port), SERVING), 5, "SERVING again")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2
                ):
                    pass
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plaintext:
            with pytest.raises(grpc.aio.AioRpcError):  # the main port stays TLS only
                await health_pb2_grpc.HealthStub(plaintext).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
        port = server.health_port
    with pytest.raises(grpc.aio.AioRpcError) as gone:  # closed with the server
        await status(port)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
