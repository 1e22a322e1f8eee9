"""Start the Switchboard processes (demo upstream, catalog, metering, router) and stop them.

Used by ``make run`` and by the end-to-end tests, so both exercise the same processes the
same way: real subprocesses on real sockets, each checked through grpc.health.v1, talking
mutual TLS with certificates from a development CA (:mod:`switchboard_devstack.pki`). Once
metering is up, the stack makes an operator key with every operator scope (``admin_key``) in
the database, as an operator would with ``python -m switchboard_metering create-operator-key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard_core.channels import client_channel
from switchboard_devstack.pki import OPERATOR, DevPki
from switchboard_devstack.storage import port_open
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.operators import bootstrap_operator_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ports:
    router: int = 50051
    catalog: int = 50052
    metering: int = 50053
    demo: int = 8088
    router_metrics: int = 9091
    catalog_metrics: int = 9092
    metering_metrics: int = 9093
    # The router's HTTP edge (OpenAI- and Anthropic-compatible).
    router_http: int = 8080

    @classmethod
    def free(cls) -> Ports:
        """Eight distinct free ports: every socket stays bound until all are picked, so the
        kernel cannot hand the same port out twice (closing each before the next bind could)."""
        with contextlib.ExitStack() as held:
            sockets = [held.enter_context(socket.socket()) for _ in range(8)]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            return cls(*(int(sock.getsockname()[1]) for sock in sockets))


@dataclass
class Stack:
    # Either may hold a password: kept out of ``repr``.
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    pki: DevPki
    ports: Ports = field(default_factory=Ports)
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Settings for one service only, over extra_env (fault tests point one service's link
    # at a fault proxy: {"router": {"REDIS_URL": ...}}).
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # An operator key holding every operator scope, made once metering is up.
    admin_key: str = field(default="", repr=False)
    # No TLS (SWITCHBOARD_INSECURE_PLAINTEXT): the services prove who they are with service
    # keys (operator keys holding service:<name>), made before they start.
    plaintext: bool = False
    service_keys: dict[str, str] = field(default_factory=dict, repr=False)

    def env_for(self, name: str) -> dict[str, str]:
        p = self.ports
        grpc_port, metrics_port = {
            "router": (p.router, p.router_metrics),
            "catalog": (p.catalog, p.catalog_metrics),
            "metering": (p.metering, p.metering_metrics),
            "demo": (0, 0),
        }[name]
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SWITCHBOARD_GRPC_PORT": str(grpc_port),
            "SWITCHBOARD_METRICS_PORT": str(metrics_port),
            "SWITCHBOARD_CATALOG_ADDR": f"127.0.0.1:{p.catalog}",
            "SWITCHBOARD_METERING_ADDR": f"127.0.0.1:{p.metering}",
            "SWITCHBOARD_DEMO_PORT": str(p.demo),
            "SWITCHBOARD_DEMO_BASE_URL": f"http://127.0.0.1:{p.demo}/v1",
            # The demo upstream's host, on top of any the developer allow-listed already.
            "SWITCHBOARD_UPSTREAM_ALLOWLIST": ",".join(
                filter(None, (os.environ.get("SWITCHBOARD_UPSTREAM_ALLOWLIST"), "127.0.0.1"))
            ),
            "PYTHONUNBUFFERED": "1",
        }
        if name == "router":
            env["SWITCHBOARD_HTTP_PORT"] = str(p.router_http)
        if name != "demo" and self.plaintext:
            env["SWITCHBOARD_INSECURE_PLAINTEXT"] = "true"
            if name in self.service_keys:
                env["SWITCHBOARD_SERVICE_KEY"] = self.service_keys[name]
        elif name != "demo":
            env.update(self.pki.env(name))
        env.update(self.extra_env)
        env.update(self.service_env.get(name, {}))
        return env

    def address(self, service: str) -> str:
        return f"127.0.0.1:{getattr(self.ports, service)}"

    def channel(
        self, service: str, *, bearer: str | None = None, as_: str = OPERATOR
    ) -> grpc.aio.Channel:
        """A channel to ``service`` presenting the certificate of ``as_`` (the operator's by
        default, or a service's) and ``bearer`` (default: the admin key; "" for none)."""
        cert, key, ca = self.pki.read(as_)
        token = self.admin_key if bearer is None else bearer
        if self.plaintext:
            return client_channel(self.address(service), bearer=token or None, plaintext=True)
        if service == "router":  # the public port asks for no client certificate
            return client_channel(self.address(service), ca=ca, bearer=token or None)
        return client_channel(
            self.address(service), ca=ca, cert=cert, key=key, bearer=token or None
        )

    def start_process(self, name: str) -> subprocess.Popen[bytes]:
        module = f"switchboard_{name}"
        out: int | object = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=self.env_for(name),
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = proc
        return proc

    async def start(self, timeout: float = 60.0) -> None:
        if self.plaintext and not self.service_keys:
            for name in ("router", "catalog", "metering"):  # the services that call others
                _, self.service_keys[name] = await bootstrap_operator_key(
                    self.database_url, MIGRATIONS, f"{name} service", [f"service:{name}"]
                )
        self.start_process("demo")
        self.start_process("catalog")
        self.start_process("metering")
        await self.wait_healthy("catalog", timeout)
        await self.wait_healthy("metering", timeout)
        if not self.admin_key:
            _, self.admin_key = await bootstrap_operator_key(
                self.database_url, MIGRATIONS, "devstack", ["*"]
            )
        self.start_process("router")
        await self.wait_healthy("router", timeout)
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.ports.demo):
            if time.monotonic() > deadline:
                raise RuntimeError("demo upstream did not start")
            await asyncio.sleep(0.05)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self) -> None:
        for name in ("router", "metering", "catalog", "demo"):
            if name in self.processes:
                try:
                    self.stop_process(name)
                except Exception:  # the others still stop; the traceback says why this did not
                    log.exception("devstack: stopping a process failed", extra={"process": name})

    async def wait_healthy(self, service: str, timeout: float) -> None:
        """Wait until ``service`` (started by this stack) reports SERVING."""
        await wait_healthy(self.channel(service, bearer=""), timeout, self.processes[service])


async def wait_healthy(
    channel: grpc.aio.Channel, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until the server behind ``channel`` reports SERVING through grpc.health.v1; the
    channel is closed afterwards."""
    deadline = time.monotonic() + timeout
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not become healthy in {timeout}s")
            await asyncio.sleep(0.1)
