"""TLS and credentials for tests that start servers in process.

Every server in the suite serves mutual TLS, as in production: certificates come from one
development CA per test process (:class:`switchboard_devstack.pki.DevPki`), and admin calls
carry an operator key made in the test database like the bootstrap command makes one.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from switchboard_catalog.testing import RunningCatalog, running_catalog
from switchboard_core.channels import client_channel
from switchboard_core.db import create_pool
from switchboard_core.tls import TlsConfig
from switchboard_devstack.pki import OPERATOR, DevPki
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.credentials import LocalCredentials
from switchboard_metering.keys import KeyStore
from switchboard_metering.operators import OperatorKeyStore, bootstrap_operator_key

_pki: DevPki | None = None
_admin_keys: dict[str, str] = {}


def test_pki() -> DevPki:
    """This test process's CA and certificates (made once)."""
    global _pki
    if _pki is None:
        _pki = DevPki.ensure(Path(tempfile.mkdtemp(prefix="switchboard-pki-")))
    return _pki


def tls_for(service: str) -> TlsConfig:
    return test_pki().tls(service)


async def admin_key(database_url: str, scopes: tuple[str, ...] = ("*",)) -> str:
    """An operator key holding ``scopes`` in the database at ``database_url`` (made once per
    database and scopes)."""
    cache_key = f"{database_url}|{','.join(scopes)}"
    if cache_key not in _admin_keys:
        _, secret = await bootstrap_operator_key(database_url, MIGRATIONS, "tests", list(scopes))
        _admin_keys[cache_key] = secret
    return _admin_keys[cache_key]


def operator_channel(address: str, key: str | None) -> grpc.aio.Channel:
    """A channel with the operator's client certificate and ``key`` on every call."""
    cert, private, ca = test_pki().read(OPERATOR)
    return client_channel(address, ca=ca, cert=cert, key=private, bearer=key)


def channel_as(address: str, service: str, bearer: str | None = None) -> grpc.aio.Channel:
    """A channel presenting service ``service``'s certificate (its identity)."""
    cert, private, ca = test_pki().read(service)
    return client_channel(address, ca=ca, cert=cert, key=private, bearer=bearer)


def public_channel(address: str) -> grpc.aio.Channel:
    """A channel to a router's public port: TLS, no client certificate."""
    return client_channel(address, ca=test_pki().ca.read_bytes())


test_pki.__test__ = False  # type: ignore[attr-defined]


@asynccontextmanager
async def secure_catalog(
    database_url: str, *, as_service: str | None = None, **overrides: Any
) -> AsyncIterator[RunningCatalog]:
    """A catalog server (``running_catalog``) serving mutual TLS, whose stub calls as an
    operator with every scope, and also as ``as_service`` (its certificate) when given."""
    key = await admin_key(database_url)
    pool = await create_pool(database_url, min_size=1, max_size=2)

    def connect(address: str) -> grpc.aio.Channel:
        if as_service is not None:
            return channel_as(address, as_service, bearer=key)
        return operator_channel(address, key)

    try:
        credentials = LocalCredentials(KeyStore(pool), OperatorKeyStore(pool))
        async with running_catalog(
            database_url,
            tls=tls_for("catalog"),
            credentials=credentials,
            connect=connect,
            **overrides,
        ) as running:
            yield running
    finally:
        await pool.close()


def tls_env(service: str) -> dict[str, str]:
    """Service ``service``'s TLS variables, pointing at the test certificates."""
    return test_pki().env(service)
