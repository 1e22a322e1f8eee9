"""Aim a service's link at a :class:`~tests.faults.proxy.FaultProxy`: the address a URL
points at, and the same URL through a proxy."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.faults.proxy import FaultProxy


def tcp_target(url: str, default_port: int) -> tuple[str, int]:
    """Host and port of a ``redis://`` or ``postgresql://`` URL; skips the test when the URL
    is a Unix socket (an embedded server), which a TCP proxy cannot stand in front of."""
    parts = urlsplit(url)
    if not parts.hostname or parts.hostname.startswith("/") or "host=/" in parts.query:
        pytest.skip("the server listens on a Unix socket; the fault proxy needs TCP")
    return parts.hostname, parts.port or default_port


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{proxy.address}" if auth else proxy.address
    return urlunsplit(parts._replace(netloc=netloc))


def redis_proxy(redis_url: str) -> FaultProxy:
    return FaultProxy(tcp_target(redis_url, 6379)).start()


def postgres_proxy(database_url: str) -> FaultProxy:
    return FaultProxy(tcp_target(database_url, 5432)).start()
