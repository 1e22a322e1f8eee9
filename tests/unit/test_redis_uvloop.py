"""Redis clients from ``create_redis`` on uvloop: a connection Redis reset under the client
fails a write with the ``ConnectionError`` asyncio's loop leads to (and redis-py retries),
never with uvloop's ``RuntimeError`` for a closed transport (MagicStack/uvloop#506).

The reset is a real one: the client talks to the local Redis through a
:class:`~tests.faults.proxy.FaultProxy` (its own thread) that resets every connection (TCP
RST), and the test waits until the client's loop has closed the transport before writing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection

from switchboard_core import event_loop
from switchboard_core.redis_client import (
    _ClosedTransportAsConnectionError,
    _Cluster,
    create_redis,
)
from tests.faults.links import redis_proxy, through
from tests.faults.proxy import FaultProxy


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    proxy = redis_proxy(redis_url)
    try:
        yield proxy
    finally:
        proxy.stop()


def on_uvloop(test: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        await test()

    event_loop.run(checked(), "uvloop")


async def reset_under(proxy: FaultProxy, connection: AbstractConnection) -> None:
    """Reset ``connection`` at the proxy; return once the client's loop closed its transport
    (so the next write meets a closed transport, as uvloop#506 needs)."""
    writer: Any = connection._writer  # redis-py's StreamWriter of the connection
    proxy.set("reset")
    try:
        async with asyncio.timeout(2.0):
            # no event tells the transport closed: poll it
            while not writer.transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    finally:
        proxy.set("pass")


def test_a_write_on_a_reset_connection_is_a_connection_error(
    proxy: FaultProxy, redis_url: str
) -> None:
    async def test() -> None:
        client = create_redis(through(proxy, redis_url), timeout=1.0)
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_command("PING")
            assert await connection.read_response() == b"PONG"
            await reset_under(proxy, connection)
            with pytest.raises(redis_errors.ConnectionError) as failed:
                await connection.send_command("PING")
            assert isinstance(failed.value.__cause__, RuntimeError)  # uvloop's, mapped
            assert not connection.is_connected  # disconnected, as for asyncio's OSError
        finally:
            await client.connection_pool.release(connection)
        assert await client.ping()  # the pool goes on with a fresh connection
        await client.aclose()

    on_uvloop(test)


def test_a_subscription_on_a_reset_connection_is_retried(proxy: FaultProxy, redis_url: str) -> None:
    """The key-change listener's shape: a pub/sub connection held open, reset, then used."""

    async def test() -> None:
        client = create_redis(through(proxy, redis_url), timeout=1.0)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("sbtest:uvloop:a")
            assert pubsub.connection is not None
            await reset_under(proxy, pubsub.connection)
            await pubsub.subscribe("sbtest:uvloop:b")  # ConnectionError, retried: no raise
            assert set(pubsub.channels) == {b"sbtest:uvloop:a", b"sbtest:uvloop:b"}
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    on_uvloop(test)


def test_any_other_runtime_error_of_a_write_goes_through(redis_url: str) -> None:
    async def test() -> None:
        client = create_redis(redis_url, timeout=1.0)
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.connect()

            def broken(data: object) -> None:
                raise RuntimeError("not a closed transport")

            connection._writer.writelines = broken
            with pytest.raises(RuntimeError, match="not a closed transport"):
                await connection.send_command("PING")
        finally:
            await client.connection_pool.release(connection)
            await client.aclose()

    on_uvloop(test)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", None),
        ("rediss://127.0.0.1:6379/0", SSLConnection),
        ("unix:///tmp/redis.sock?db=0", UnixDomainSocketConnection),
    ],
)
def test_the_plain_client_keeps_the_schemes_connection_class(
    url: str, kind: type[AbstractConnection] | None
) -> None:
    connection_class = create_redis(url).connection_pool.connection_class
    assert issubclass(connection_class, _ClosedTransportAsConnectionError)
    if kind is not None:
        assert issubclass(connection_class, kind)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0"])
def test_every_cluster_node_makes_mapped_connections(url: str) -> None:
    """No cluster here: the client is only built (it connects on its first command)."""
    client = create_redis(url, cluster=True)
    assert isinstance(client, _Cluster)
    made = client.connection_kwargs["connection_class"]
    assert client.nodes_manager.connection_kwargs["connection_class"] is made  # nodes found later
    assert issubclass(made, _ClosedTransportAsConnectionError)
    assert issubclass(made, SSLConnection) == url.startswith("rediss:")
    assert [node.connection_class for node in client.startup_nodes] == [made]
