"""Server bootstrap shared by every service.

A :class:`GrpcServer` owns one ``grpc.aio`` server with the standard health service (its
status following the service's dependencies, :mod:`switchboard_core.health`), server
reflection (v1 and v1alpha, :mod:`switchboard_core.reflection`), the interceptor
(authorization, request checks, errors) and a Prometheus endpoint. It serves TLS as
:mod:`switchboard_core.tls` describes, and plaintext only when configured so, with a warning
at start. ``run_until_signal`` serves until SIGTERM/SIGINT, then marks the service
NOT_SERVING (ending health watches), lets in-flight RPCs (streams included) finish within the
grace period and runs the service's own cleanup.

One of several workers of a service (:mod:`switchboard_core.workers`), the server binds its
ports with ``SO_REUSEPORT``, so the workers share them, and serves its metrics on the worker's
own port. Alone, it binds them exclusively (gRPC's C core would otherwise set
``SO_REUSEPORT`` on Linux by default, and a second process started on the same port by mistake
would silently take half the connections instead of failing to start).

A server whose registrations include audited RPCs (admin writes,
:class:`~switchboard_core.rpc_owners.Audit`) needs an ``audit`` sink: without one it refuses
to start, so an admin change is never made unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from switchboard_core.audit import Auditor, AuditSink
from switchboard_core.auth import Authenticator
from switchboard_core.config import ServerConfig
from switchboard_core.health import DependencyProbe, HealthMonitor, HealthServicer
from switchboard_core.interceptors import ServerInterceptor
from switchboard_core.loop_lag import LoopLagProbe
from switchboard_core.metrics import serve_metrics
from switchboard_core.reflection import enable_reflection
from switchboard_core.rpc_owners import audited_rpcs
from switchboard_core.tls import describe
from switchboard_core.workers import Worker

log = logging.getLogger(__name__)

# Generous message sizes (long prompts). Keepalive both ways: the server pings its clients
# (so a dead watcher's stream ends and idle streams survive proxies), and accepts the pings
# of the services' channels (switchboard_core.channels: every KEEPALIVE_SECONDS, calls or
# not). A client pinging more often than min_recv_ping_interval_without_data_ms gets a
# strike, and GOAWAY too_many_pings after grpc.http2.max_ping_strikes (2): the bound sits
# well under the services' interval.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 2),
]


def server_options(reuse_port: bool) -> list[tuple[str, Any]]:
    """:data:`SERVER_OPTIONS` with ``SO_REUSEPORT`` on (workers sharing the port) or off."""
    return [*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port else 0)]


class Companion(Protocol):
    """Another listener of the same process (the router's HTTP edge), started once the gRPC
    server is up and stopped with it: ``stop`` stops accepting and lets in-flight requests
    finish within the grace period. ``reuse_port``: bind with SO_REUSEPORT (workers share
    the port)."""

    async def start(self, *, reuse_port: bool = False) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Registration:
    """One servicer and the generated function that adds it to a server."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str


@dataclass
class GrpcServer:
    config: ServerConfig
    registrations: Sequence[Registration]
    # Checks every call against the RPC owner table (switchboard_core.rpc_owners).
    authenticator: Authenticator
    # Run when stopping begins, before the grace period: end streams that never finish on
    # their own (catalog watches) so stopping does not wait out the whole grace.
    before_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run after the server has stopped: close pools and clients.
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Where the admin changes made through this server are recorded (switchboard_core.audit).
    audit: AuditSink | None = None
    # Other listeners of this process, serving and stopping with the gRPC server.
    companions: Sequence[Companion] = field(default_factory=list)
    # What the service cannot serve without (its database): while one fails, health says
    # NOT_SERVING (switchboard_core.health).
    probes: Sequence[DependencyProbe] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    _server: grpc.aio.Server | None = None
    _health: HealthServicer | None = None
    _auditor: Auditor | None = None
    _monitor: HealthMonitor | None = None
    _health_server: grpc.aio.Server | None = None
    health_port: int = 0  # the plaintext health-only port, once started (0: none)
    # The event loop's stalls, always measured (switchboard_event_loop_lag_seconds).
    _loop_lag: LoopLagProbe | None = None

    async def start(self, *, with_metrics: bool = True, worker: Worker | None = None) -> int:
        """Serve; ``worker``: this process's place among the service's workers (alone by
        default). Returns the bound gRPC port."""
        worker = worker or Worker()
        if worker.shares_ports and (self.config.grpc_port == 0 or self.config.health_port == 0):
            raise RuntimeError("workers share fixed ports: port 0 (any free port) cannot be shared")
        metrics_port = worker.metrics_port(self.config.metrics_port)
        options = server_options(worker.shares_ports)
        audited = [path for r in self.registrations for path in audited_rpcs(r.full_name)]
        if audited and self.audit is None:
            raise RuntimeError(f"audited RPCs served without an audit sink: {audited}")
        self._auditor = Auditor(self.audit) if self.audit is not None else None
        server = grpc.aio.server(
            interceptors=[ServerInterceptor(self.authenticator, auditor=self._auditor)],
            options=options,
        )
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for registration in self.registrations:
            registration.add(registration.servicer, server)
        names = [r.full_name for r in self.registrations]
        enable_reflection([*names, health.SERVICE_NAME], server)
        address = f"{self.config.host}:{self.config.grpc_port}"
        credentials = self.config.tls.server_credentials()
        if credentials is None:
            log.warning(
                "serving PLAINTEXT: no transport security; callers are not authenticated by"
                " certificate (set SWITCHBOARD_TLS_CERT, _KEY and _CA to serve TLS)"
            )
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        await server.start()
        self._server = server
        for companion in self.companions:
            await companion.start(reuse_port=worker.shares_ports)
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.probes:
            self._monitor = HealthMonitor(
                self._health,
                ["", *names],
                self.probes,
                interval=self.config.health_probe_seconds,
                timeout=self.config.health_probe_timeout_seconds,
            )
            self._monitor.start()
        if self.config.health_port is not None:
            self.health_port = await self._serve_health_alone(self.config.health_port, options)
        if with_metrics:
            self.metrics_port = serve_metrics(self.config.host, metrics_port)
        self._loop_lag = LoopLagProbe()
        self._loop_lag.start()
        log.info(
            "serving",
            extra={
                "grpc_port": self.port,
                "metrics_port": self.metrics_port,
                "health_port": self.health_port,
                "worker": worker.index,
                "workers": worker.count,
                **describe(self.config.tls),
            },
        )
        return self.port

    async def _serve_health_alone(self, port: int, options: list[tuple[str, Any]]) -> int:
        """``grpc.health.v1`` alone, in plaintext, on ``port``: for probes that speak no TLS
        (kubelet's ``grpc:`` probes). It tells the same status as the main port (the same
        servicer) and nothing else: every other RPC is UNIMPLEMENTED there."""
        server = grpc.aio.server(options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        bound = server.add_insecure_port(f"{self.config.host}:{port}")
        await server.start()
        self._health_server = server
        return bound

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight RPCs get ``grace`` seconds), then run every cleanup once."""
        if self._server is not None:
            for hook in self.before_stop:
                await hook()
            if self._monitor is not None:  # draining: NOT_SERVING from now on, whatever
                await self._monitor.stop()
                self._monitor = None
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            grace = self.config.shutdown_grace_seconds if grace is None else grace
            log.info("stopping", extra={"grace_seconds": grace})
            await asyncio.gather(
                self._server.stop(grace), *(companion.stop() for companion in self.companions)
            )
            self._server = None
        if self._health_server is not None:  # probes saw NOT_SERVING until the drain ended
            await self._health_server.stop(0)
            self._health_server = None
        if self._loop_lag is not None:
            await self._loop_lag.stop()
            self._loop_lag = None
        if self._auditor is not None:  # audit writes of cancelled calls, before pools close
            await self._auditor.flush()
        cleanups, self.on_stop = list(self.on_stop), []
        for cleanup in cleanups:
            try:
                await cleanup()
            except Exception:  # the others still run; the traceback says what did not close
                log.exception("cleanup failed while stopping")
        log.info("stopped")

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()
