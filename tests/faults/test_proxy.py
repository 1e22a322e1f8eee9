"""The fault proxy itself, against the real Redis: each mode does what the fault tests rely on."""

from __future__ import annotations

import socket
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.faults.proxy import FaultProxy, wait_port_closed


def _target(redis_url: str) -> tuple[str, int]:
    client = redis.Redis.from_url(redis_url)
    kwargs = client.connection_pool.connection_kwargs
    client.close()
    if "path" in kwargs:
        pytest.skip("Redis on a Unix socket")
    return kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))


def _client(proxy: FaultProxy, timeout: float = 0.5) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one try: the test times the proxy, not redis-py
    )


def test_modes(redis_url: str) -> None:
    with FaultProxy(_target(redis_url)) as proxy:
        client = _client(proxy)
        assert client.ping()

        proxy.set("latency", latency=0.2)
        started = time.monotonic()
        assert client.ping()
        assert time.monotonic() - started >= 0.35  # both directions held

        proxy.set("blackhole")
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()  # the open connection goes silent
        assert time.monotonic() - started < 2
        with pytest.raises(redis.TimeoutError):
            _client(proxy).ping()  # a new one is accepted and never answered

        proxy.set("pass")
        assert _client(proxy).ping()

        proxy.set("reset")
        with pytest.raises(redis.ConnectionError):
            _client(proxy).ping()

        proxy.set("refuse")
        wait_port_closed(proxy.port)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", proxy.port)) != 0

        proxy.set("pass")
        assert _client(proxy).ping()

        proxy.set("bandwidth", bytes_per_second=20_000)
        fresh = _client(proxy, timeout=5)
        started = time.monotonic()
        fresh.set(b"faults:proxy:blob", b"x" * 20_000)
        assert fresh.get(b"faults:proxy:blob") is not None
        fresh.delete(b"faults:proxy:blob")
        assert time.monotonic() - started >= 1.0
