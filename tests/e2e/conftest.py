"""The services as real processes: each e2e module gets its own stack (module scope).

They talk mutual TLS with the test process's certificates (``tests.secure``); the
``metering`` and ``catalog`` stubs call as an operator with every scope, ``router`` as a
client of the public port (requests carry their API key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switchboard.catalog.v1 import catalog_pb2_grpc
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2_grpc
from switchboard_devstack.stack import Ports, Stack
from tests.e2e.support import PROVIDER_KEYS
from tests.secure import test_pki


@pytest.fixture(scope="module")
def stack_ports() -> Ports:
    """The module's stack's ports (fault tests aim their proxies at them)."""
    return Ports.free()


def _service_env(request: pytest.FixtureRequest) -> dict[str, dict[str, str]]:
    """A module's per-service settings: its ``stack_service_env`` fixture when it has one
    (fault tests: the proxies it builds), else its ``STACK_SERVICE_ENV``."""
    try:
        found: dict[str, dict[str, str]] = request.getfixturevalue("stack_service_env")
    except pytest.FixtureLookupError:
        found = getattr(request.module, "STACK_SERVICE_ENV", {})
    return found


@pytest.fixture(scope="module")
def budget_prefix(request: pytest.FixtureRequest, redis_prefix: str) -> str:
    """The module's stack's Redis prefix for budgets, rate limits, live endpoint statistics
    and circuit breakers: its own, so one module's failing endpoints (breakers, figures) do
    not steer the next module's routing."""
    return f"{redis_prefix}budget:{request.module.__name__.rpartition('.')[2]}:"


@pytest.fixture(scope="module")
async def stack(
    request: pytest.FixtureRequest,
    stack_ports: Ports,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    budget_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """The module's stack; a module may set ``STACK_ENV`` to override settings,
    ``STACK_SERVICE_ENV`` ({service: {name: value}}) or a module-scoped
    ``stack_service_env`` fixture to override them for one service, and
    ``STACK_PLAINTEXT = True`` to run it without TLS (service keys instead)."""
    logs: Path = tmp_path_factory.mktemp("e2e-logs")
    running = Stack(
        database_url,
        redis_url,
        test_pki(),
        ports=stack_ports,
        log_dir=logs,
        extra_env={
            "SWITCHBOARD_USAGE_STREAM": redis_prefix + "usage",
            "SWITCHBOARD_BUDGET_PREFIX": budget_prefix,
            # The database is shared with integration tests that record events dated years ago.
            "SWITCHBOARD_LEDGER_RETENTION_DAYS": "0",
            "SWITCHBOARD_KEY_CACHE_SECONDS": "0.3",
            "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0.01",
            "SWITCHBOARD_SHUTDOWN_GRACE_SECONDS": "10",
            **{f"SWITCHBOARD_PROVIDER_KEY_{p.upper()}": k for p, k in PROVIDER_KEYS.items()},
            # Tests point seeded providers at local fakes: allow 127.0.0.1 as an upstream and
            # declare it as a host of each provider the router has a key for.
            "SWITCHBOARD_UPSTREAM_ALLOWLIST": "127.0.0.1",
            **{f"SWITCHBOARD_PROVIDER_HOSTS_{p.upper()}": "127.0.0.1" for p in PROVIDER_KEYS},
            **getattr(request.module, "STACK_ENV", {}),
        },
        plaintext=getattr(request.module, "STACK_PLAINTEXT", False),
        service_env=_service_env(request),
    )
    try:
        await running.start(timeout=60)
        yield running
    finally:
        running.stop()
        # A module may allow libraries to log tracebacks it provokes on purpose (asyncpg's
        # pool logs one while the Postgres a test crashed is restarting).
        allowed = getattr(request.module, "ALLOWED_TRACEBACK_LOGGERS", ())
        for log in sorted(logs.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if "Traceback" in line and not any(f'"logger": "{a}"' in line for a in allowed):
                    raise AssertionError(f"{log.name} logged a traceback:\n{line[:3000]}")


@pytest.fixture(scope="module")
async def metering(stack: Stack) -> AsyncIterator[metering_pb2_grpc.MeteringServiceAsyncStub]:
    async with stack.channel("metering") as channel:
        yield metering_pb2_grpc.MeteringServiceStub(channel)


@pytest.fixture(scope="module")
async def router(stack: Stack) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    async with stack.channel("router", bearer="") as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest.fixture(scope="module")
async def catalog(stack: Stack) -> AsyncIterator[catalog_pb2_grpc.CatalogServiceAsyncStub]:
    async with stack.channel("catalog") as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)


@pytest.fixture(scope="module")
async def api_key(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> metering_pb2.CreateApiKeyResponse:
    return await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="e2e", name="e2e")
    )
