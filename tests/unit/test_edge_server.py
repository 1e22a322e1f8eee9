"""The HTTP edge's frame: its port setting, its routes' owners, its HTTP statuses and its TLS."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from switchboard_core.config import ConfigError
from switchboard_core.errors import (
    InvalidArgument,
    ResourceExhausted,
    SwitchboardError,
    Unauthenticated,
    Unavailable,
)
from switchboard_core.rpc_owners import HTTP_ROUTE_RPCS, RPC_OWNERS
from switchboard_core.tls import TlsConfig
from switchboard_devstack.pki import DevPki
from switchboard_router.config import RouterConfig
from switchboard_router.edge.server import _check_owned, ssl_context
from switchboard_router.edge.status import http_status, retry_after

BASE = {"REDIS_URL": "redis://127.0.0.1:6379/0", "SWITCHBOARD_INSECURE_PLAINTEXT": "true"}


@pytest.mark.parametrize(
    ("value", "port"), [(None, 8080), ("off", None), ("OFF", None), ("0", 0), ("9000", 9000)]
)
def test_the_http_port_is_a_port_or_off(value: str | None, port: int | None) -> None:
    env = dict(BASE) if value is None else {**BASE, "SWITCHBOARD_HTTP_PORT": value}
    assert RouterConfig.from_env(env).http_port == port


@pytest.mark.parametrize("value", ["http", "-1", "70000"])
def test_a_bad_http_port_is_reported_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match="SWITCHBOARD_HTTP_PORT"):
        RouterConfig.from_env({**BASE, "SWITCHBOARD_HTTP_PORT": value})


def test_every_http_route_is_owned_as_an_rpc_of_the_table() -> None:
    for route, rpc in HTTP_ROUTE_RPCS.items():
        assert rpc in RPC_OWNERS, route


def test_a_route_missing_from_the_table_stops_the_edge_from_starting() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    _check_owned([web.post("/v1/chat/completions", handler)])
    with pytest.raises(RuntimeError, match="/v1/embeddings"):
        _check_owned([web.post("/v1/embeddings", handler)])


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument({"messages": "at least one message is required"}), 400),
        (Unauthenticated("no key", reason="CREDENTIALS_MISSING"), 401),
        (SwitchboardError("credit", reason="INSUFFICIENT_CREDIT"), 402),
        (ResourceExhausted("slow down", reason="RATE_LIMITED"), 429),
        (Unavailable("provider down", reason="UPSTREAM_UNAVAILABLE"), 502),
        (Unavailable("no endpoint", reason="NO_ENDPOINT_AVAILABLE"), 503),
        (Unavailable("timeout", reason="UPSTREAM_TIMEOUT"), 504),
    ],
)
def test_domain_errors_get_the_status_openai_compatible_apis_use(
    error: SwitchboardError, status: int
) -> None:
    assert http_status(error) == status


def test_retry_after_is_whole_seconds_rounded_up_and_only_when_a_retry_can_help() -> None:
    assert retry_after(Unavailable("x", retry_after_seconds=0.2)) == {"Retry-After": "1"}
    assert retry_after(Unavailable("x", retry_after_seconds=2.5)) == {"Retry-After": "3"}
    assert retry_after(InvalidArgument({"model": "bad"})) == {}


def test_an_unknown_code_is_a_500() -> None:
    error = SwitchboardError("odd")
    error.code = grpc.StatusCode.UNKNOWN
    assert http_status(error) == 500


def test_tls_serves_the_grpc_ports_certificate_and_plaintext_serves_none(tmp_path: Path) -> None:
    pki = DevPki.ensure(tmp_path)
    public = replace(pki.tls("router"), require_client_cert=False)
    context = ssl_context(public)
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert list(tmp_path.glob("**/key.pem")) == []  # the temporary copy is gone
    required = ssl_context(pki.tls("router"))
    assert required is not None and required.verify_mode == ssl.CERT_REQUIRED
    assert ssl_context(TlsConfig(plaintext=True)) is None
