"""Start the Switchboard processes (demo upstream, catalog, metering, router) and stop them.

Used by ``make run`` and by the end-to-end tests, so both exercise the same processes the
same way: real subprocesses on real sockets, each checked through grpc.health.v1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard_devstack.storage import free_port, port_open


@dataclass(frozen=True)
class Ports:
    router: int = 50051
    catalog: int = 50052
    metering: int = 50053
    demo: int = 8088
    router_metrics: int = 9091
    catalog_metrics: int = 9092
    metering_metrics: int = 9093

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(7)))


@dataclass
class Stack:
    database_url: str
    redis_url: str
    ports: Ports = field(default_factory=Ports)
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

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
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.extra_env)
        return env

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
        self.start_process("demo")
        self.start_process("catalog")
        self.start_process("metering")
        await wait_healthy(f"127.0.0.1:{self.ports.catalog}", timeout, self.processes["catalog"])
        await wait_healthy(f"127.0.0.1:{self.ports.metering}", timeout, self.processes["metering"])
        self.start_process("router")
        await wait_healthy(f"127.0.0.1:{self.ports.router}", timeout, self.processes["router"])
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
                with contextlib.suppress(Exception):
                    self.stop_process(name)


async def wait_healthy(
    address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until the server at ``address`` reports SERVING through grpc.health.v1."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for {address} exited with {proc.returncode}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become healthy in {timeout}s")
            await asyncio.sleep(0.1)
