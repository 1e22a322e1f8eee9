"""The processes ``make bench`` measures: a stack of the real Switchboard processes (demo
upstream, catalog, metering, router) with its bench API keys, the demo upstream's workload
(chunks per reply, gap between them) changed in place, and the bare-relay baseline
(:mod:`bench.bare_relay`) as a process of its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.channels import client_channel
from switchboard_devstack.pki import DevPki
from switchboard_devstack.stack import Ports, Stack
from switchboard_devstack.storage import (
    create_database,
    drop_database,
    find_postgres,
    find_redis,
    free_port,
    port_open,
)

START_TIMEOUT = 30.0


@dataclass
class Deployment:
    """One running stack and what the bench drives through it."""

    name: str
    stack: Stack
    database: str
    router: psutil.Process
    metering: psutil.Process
    channel: grpc.aio.Channel
    unlimited: str  # an API key without limits
    limited: str  # an API key with a daily limit
    rate_limited: str  # an API key (and account) with rate limits that never refuse


# Rate limits at their bounds (switchboard_core.rate_limits): checked, never reached.
NEVER_REFUSING = metering_pb2.RateLimits(
    requests_per_minute=1_000_000, tokens_per_minute=10_000_000_000, max_concurrent=100_000
)


async def new_stack(
    prefix: str,
    admin: str,
    redis: str,
    state: Path,
    log_dir: Path,
    env: dict[str, str],
    *,
    plaintext: bool = False,
    service_env: dict[str, dict[str, str]] | None = None,
    ports: Ports | None = None,
) -> tuple[Stack, str]:
    """A stack (not started) on a fresh database named ``prefix_<random>``, whose usage stream
    and budget keys are named after it (runs never share them), logging warnings only, ``env``
    on top (``service_env``: one service's settings on top of that); on ``ports`` (default:
    free ones). Returns it and its database's name, for the caller to drop."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    database = await create_database(admin, name)
    stack = Stack(
        database,
        redis,
        DevPki.ensure(state / "pki"),
        ports=ports or Ports.free(),
        log_dir=log_dir,
        extra_env={
            "SWITCHBOARD_USAGE_STREAM": f"{name}:usage",
            "SWITCHBOARD_BUDGET_PREFIX": f"{name}:budget:",
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
            **env,
        },
        plaintext=plaintext,
        service_env=service_env or {},
    )
    return stack, name


@asynccontextmanager
async def bench_stack(
    prefix: str,
    env: dict[str, str],
    *,
    plaintext: bool = False,
    service_env: dict[str, dict[str, str]] | None = None,
    ports: Ports | None = None,
) -> AsyncIterator[Stack]:
    """One stack (mutual TLS, as deployed, unless ``plaintext``) on a fresh database named
    ``prefix_<random>``,
    against Postgres and Redis (DATABASE_URL/REDIS_URL, else the local ones, else embedded),
    usage and budgets under keys of its own, ``env`` on top (``service_env``: one service's
    settings on top of that); on ``ports`` (default: free ones); all gone on the way out (the
    logs stay, in the printed directory)."""
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    stack, name = await new_stack(
        prefix,
        admin,
        redis,
        state,
        state / "logs",
        env,
        plaintext=plaintext,
        service_env=service_env,
        ports=ports,
    )
    try:
        await stack.start()
        yield stack
    finally:
        stack.stop()
        await drop_database(admin, name)
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                server.stop()
        print(f"\nlogs in {state / 'logs'}")


async def _keys(stack: Stack) -> tuple[str, str, str]:
    """An unlimited key, a key with a daily limit (every request reserves and settles in
    Redis) and a key whose key and account rate limits are all set (one script, six limits)."""
    async with stack.channel("metering") as ch:
        metering = metering_pb2_grpc.MeteringServiceStub(ch)
        reply = await metering.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id="bench", name="bench")
        )
        limited = await metering.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id="bench-limited", name="bench")
        )
        await metering.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(
                key_id=limited.api_key.id, limits=metering_pb2.SpendLimits(daily_usd="5000")
            )
        )
        rated = await metering.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id="bench-rate", name="bench")
        )
        await metering.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(key_id=rated.api_key.id, rate_limits=NEVER_REFUSING)
        )
        await metering.SetAccountLimits(
            metering_pb2.SetAccountLimitsRequest(
                account_id="bench-rate", rate_limits=NEVER_REFUSING
            )
        )
    return reply.secret, limited.secret, rated.secret


async def deploy(
    name: str, admin: str, redis: str, state: Path, token_delay: float, *, plaintext: bool
) -> Deployment:
    stack, db_name = await new_stack(
        "sbbench",
        admin,
        redis,
        state,
        state / f"logs-{name}",
        {"SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(token_delay)},
        plaintext=plaintext,
    )
    try:
        await stack.start()
        unlimited, limited, rated = await _keys(stack)
    except BaseException:
        stack.stop()
        await drop_database(admin, db_name)
        raise
    return Deployment(
        name,
        stack,
        db_name,
        psutil.Process(stack.processes["router"].pid),
        psutil.Process(stack.processes["metering"].pid),
        stack.channel("router", bearer=""),
        unlimited,
        limited,
        rated,
    )


async def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        await asyncio.sleep(0.05)


async def set_workload(stack: Stack, chunks: int, token_delay: float) -> None:
    """Restart the stack's demo upstream (same port) to send ``chunks`` content chunks
    ``token_delay`` seconds apart."""
    stack.extra_env["SWITCHBOARD_DEMO_REPLY_TOKENS"] = str(chunks)
    stack.extra_env["SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS"] = str(token_delay)
    stack.stop_process("demo")
    await _wait_port(stack.ports.demo, stack.start_process("demo"), "demo upstream")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.bare_relay", *args], stdout=out, stderr=subprocess.STDOUT
        )


@dataclass
class BareRelay:
    """The bare-relay baseline process and a plaintext channel to it."""

    proc: subprocess.Popen[bytes]
    process: psutil.Process
    channel: grpc.aio.Channel

    @classmethod
    async def start(cls, upstream: str, log: Path) -> BareRelay:
        port = free_port()
        proc = _spawn(["--port", str(port), "--upstream", upstream], log)
        try:
            await _wait_port(port, proc, "bare relay")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        channel = client_channel(f"127.0.0.1:{port}", plaintext=True)
        return cls(proc, psutil.Process(proc.pid), channel)

    async def stop(self) -> None:
        await self.channel.close(None)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
