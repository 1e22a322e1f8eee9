"""A real catalog server for tests: in process, on a free port, against a real Postgres,
serving mutual TLS with ``tls``.

Other services' tests can use it too (a router test that needs a catalog to watch)::

    async with running_catalog(database_url, tls=..., credentials=..., connect=...) as catalog:
        await catalog.stub.GetModel(...)

``credentials`` checks the operator keys of admin calls (production asks metering); ``connect``
makes the client channel to the server's address (with the caller's certificate and key).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from switchboard.catalog.v1 import catalog_pb2_grpc
from switchboard_catalog.app import create_app
from switchboard_catalog.config import CatalogConfig, packaged_seed_path
from switchboard_catalog.service import CatalogService
from switchboard_catalog.watch import CatalogBroadcaster
from switchboard_core.auth import CredentialVerifier
from switchboard_core.config import ServerConfig
from switchboard_core.server import GrpcServer
from switchboard_core.tls import TlsConfig
from switchboard_core.upstreams import UpstreamPolicy


@dataclass
class RunningCatalog:
    server: GrpcServer
    channel: grpc.aio.Channel
    stub: catalog_pb2_grpc.CatalogServiceAsyncStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def broadcaster(self) -> CatalogBroadcaster:
        servicer = self.server.registrations[0].servicer
        assert isinstance(servicer, CatalogService)
        return servicer.broadcaster


def config_for_tests(
    database_url: str,
    *,
    tls: TlsConfig,
    seed: bool = True,
    grace_seconds: float = 1.0,
    **overrides: Any,
) -> CatalogConfig:
    """A config on 127.0.0.1 and free ports; ``overrides`` set other fields. The demo upstream
    and the test fakes listen on 127.0.0.1, so it is allow-listed unless overridden."""
    overrides.setdefault("upstream_policy", UpstreamPolicy(["127.0.0.1"]))
    server = ServerConfig(
        service="catalog",
        grpc_port=0,
        metrics_port=0,
        shutdown_grace_seconds=grace_seconds,
        tls=tls,
    )
    return CatalogConfig(
        server=server,
        database_url=database_url,
        seed_path=packaged_seed_path() if seed else None,
        **overrides,
    )


@contextlib.asynccontextmanager
async def running_catalog(
    database_url: str,
    *,
    tls: TlsConfig,
    credentials: CredentialVerifier,
    connect: Callable[[str], grpc.aio.Channel],
    seed: bool = True,
    grace_seconds: float = 1.0,
    **overrides: Any,
) -> AsyncIterator[RunningCatalog]:
    config = config_for_tests(
        database_url, tls=tls, seed=seed, grace_seconds=grace_seconds, **overrides
    )
    server = await create_app(config, credentials)
    port = await server.start(with_metrics=False)
    channel = connect(f"127.0.0.1:{port}")
    try:
        yield RunningCatalog(server, channel, catalog_pb2_grpc.CatalogServiceStub(channel))
    finally:
        await channel.close(None)
        await server.stop()
