"""The standard health service (``grpc.health.v1.Health``), with all three of its RPCs, and
the serving status it reports.

grpcio-health-checking's asyncio servicer implements ``Check`` and ``Watch`` but not ``List``,
which the service descriptor has had since 2024: its generated base raises
``NotImplementedError``, so every ``List`` call became ``INTERNAL`` and a logged traceback.

The status is SERVING while the service can do its work. A :class:`HealthMonitor` runs the
service's :class:`DependencyProbe` s (catalog and metering: their Postgres pool) every
``health_probe_seconds``, each bounded by ``health_probe_timeout_seconds``: one failing turns
every name NOT_SERVING, all passing again turns them back SERVING. So a client channel
checking health (``healthCheckConfig``), a load balancer or a Kubernetes readiness probe
stops sending work to a replica that lost its database within an interval and a timeout,
and sends it again once the database answers. Draining
(:meth:`~switchboard_core.server.GrpcServer.stop`) stops the monitor, then marks every name
NOT_SERVING for good and ends every ``Watch`` once it said so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from grpc_health.v1 import health, health_pb2

from switchboard_core.db import within
from switchboard_core.errors import SwitchboardError
from switchboard_core.periodic import BackgroundTask

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# What a failing probe may raise (anything else is a bug: logged with its traceback).
PROBE_FAILURES: tuple[type[BaseException], ...] = (
    SwitchboardError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """The stock ``Watch``, except that once draining began and NOT_SERVING went out the
        stream ends (OK): a watcher (every client channel checking health) no longer holds
        the server's stop for its whole grace period."""
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        last_status = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, SERVICE_UNKNOWN)
                    if status != last_status:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last_status = status
                    if self._gracefully_shutting_down:
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for good, and every watch ends (those of unknown services too)."""
        await super().enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every registered service's status (``""``: the server's), as last set."""
        reply = health_pb2.HealthListResponse()
        for service, status in self._server_status.items():
            reply.statuses[service].status = status
        return reply


@dataclass(frozen=True)
class DependencyProbe:
    """One dependency the service cannot serve without: ``check(timeout)`` returns when it
    answers and raises one of :data:`PROBE_FAILURES` when it does not."""

    name: str
    check: Callable[[float], Awaitable[None]]


def database_probe(pool: asyncpg.Pool) -> DependencyProbe:
    """Postgres answers ``SELECT 1`` through ``pool`` (a connection from the pool, or a new
    one when the old ones broke)."""

    async def select_one() -> None:
        async with pool.acquire(timeout=None) as connection:
            await connection.fetchval("SELECT 1")

    async def check(timeout: float) -> None:
        # within bounds the whole and abandons (cancels, never awaits) a stuck query.
        await within(timeout, select_one(), "health probe")

    return DependencyProbe("database", check)


class HealthMonitor(BackgroundTask):
    """Keeps ``names``' status on ``servicer`` in step with ``probes`` (see the module doc)."""

    name = "health-monitor"

    def __init__(
        self,
        servicer: HealthServicer,
        names: Sequence[str],
        probes: Sequence[DependencyProbe],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._servicer = servicer
        self._names = list(names)
        self._probes = list(probes)
        self.interval = interval
        self.timeout = timeout
        self.serving = True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.probe_once()

    async def probe_once(self) -> bool:
        """Run every probe once and set the status; returns whether all passed."""
        failing = [probe.name for probe in self._probes if not await self._passes(probe)]
        serving = not failing
        if serving != self.serving:
            self.serving = serving
            if serving:
                log.info("dependencies answer again: SERVING")
            else:
                log.warning("dependencies not answering: NOT_SERVING", extra={"failing": failing})
            status = SERVING if serving else NOT_SERVING
            for name in self._names:
                await self._servicer.set(name, status)
        return serving

    async def _passes(self, probe: DependencyProbe) -> bool:
        try:
            # The probe bounds itself; this bound is the backstop for one that does not.
            await asyncio.wait_for(probe.check(self.timeout), self.timeout + 1.0)
        except PROBE_FAILURES as error:
            if self.serving:
                log.warning(
                    "health probe failed",
                    extra={"probe": probe.name, "error": type(error).__name__},
                )
            return False
        return True
