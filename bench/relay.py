"""``make bench``: streaming load through the router versus straight at its upstream.

Starts the real processes (demo upstream, catalog, metering, router) on free ports against
Postgres and Redis (DATABASE_URL/REDIS_URL, else the local ones, else embedded), then for each
concurrency runs the same 20-chunk streaming completions (1) straight at the demo upstream
over HTTP/SSE, (2) through the router over gRPC with a key without limits and (3) with a key
with a daily spend limit (each request reserves and settles in Redis), and prints
time-to-first-token p50/p99, completions per second and the router's CPU milliseconds per
completion (from the router process's own CPU time). It fails only if requests fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import psutil

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_demo.upstream import reply_words
from switchboard_devstack.stack import Ports, Stack
from switchboard_devstack.storage import (
    create_database,
    drop_database,
    find_postgres,
    find_redis,
)

PROMPT = "Write twenty words about gateways."
EXPECTED_TEXT = " ".join(reply_words(20))


@dataclass
class Result:
    name: str
    concurrency: int
    ttft: list[float]
    seconds: float
    failures: int
    cpu_ms_per_completion: float | None = None
    metering_cpu_ms_per_completion: float | None = None

    def row(self) -> str:
        q = statistics.quantiles(self.ttft, n=100) if len(self.ttft) > 1 else [self.ttft[0]] * 99
        rate = len(self.ttft) / self.seconds
        cpu = f"{self.cpu_ms_per_completion:8.2f}" if self.cpu_ms_per_completion else "       -"
        meter = self.metering_cpu_ms_per_completion
        metering = f"{meter:8.2f}" if meter is not None else "       -"
        return (
            f"{self.name:<13}{self.concurrency:>5}{len(self.ttft):>8}{q[49] * 1000:>10.2f}"
            f"{q[98] * 1000:>10.2f}{rate:>12.1f}{cpu:>12}{metering:>12}{self.failures:>8}"
        )


HEADER = (
    f"{'path':<13}{'conc':>5}{'n':>8}{'ttft p50':>10}{'ttft p99':>10}{'compl/s':>12}"
    f"{'router cpu':>12}{'meter cpu':>12}{'failed':>8}\n{'':<13}{'':>5}{'':>8}{'ms':>10}"
    f"{'ms':>10}{'':>12}{'ms/compl':>12}{'ms/compl':>12}{'':>8}"
)


async def drive(
    one: Callable[[], Awaitable[float]], total: int, concurrency: int
) -> tuple[list[float], float, int]:
    ttfts: list[float] = []
    failures = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                ttfts.append(await one())
            except (grpc.aio.AioRpcError, aiohttp.ClientError, RuntimeError):
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, time.perf_counter() - start, failures


def cpu_ms(process: psutil.Process) -> float:
    times = process.cpu_times()
    return (times.user + times.system) * 1000


def direct_call(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[float]]:
    body = json.dumps(
        {
            "model": "demo",
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    headers = {"Content-Type": "application/json"}

    async def one() -> float:
        start = time.perf_counter()
        ttft = 0.0
        chunks = 0
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content"' in line:
                    chunks += 1
                    if not ttft and b'"content": ""' not in line:
                        ttft = time.perf_counter() - start
        if chunks < 20:
            raise RuntimeError("short stream")
        return ttft

    return one


def router_call(
    stub: router_pb2_grpc.RouterServiceAsyncStub, key: str
) -> Callable[[], Awaitable[float]]:
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)],
    )
    metadata = (("authorization", f"Bearer {key}"),)

    async def one() -> float:
        start = time.perf_counter()
        ttft = 0.0
        text: list[str] = []
        ended = False
        async for message in stub.StreamCompletion(request, metadata=metadata):
            kind = message.WhichOneof("event")
            if kind == "delta":
                text.append(message.delta.text)
                if not ttft:
                    ttft = time.perf_counter() - start
            elif kind == "end":
                ended = message.end.usage.completion_tokens == 20
        if "".join(text) != EXPECTED_TEXT or not ended:
            raise RuntimeError("short stream")
        return ttft

    return one


async def run(levels: list[int], requests: int, token_delay: float) -> int:
    state = Path(tempfile.mkdtemp(prefix="sbbench-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    db_name = f"sbbench_{uuid.uuid4().hex[:8]}"
    database = await create_database(admin, db_name)
    stack = Stack(
        database,
        redis,
        ports=Ports.free(),
        log_dir=state / "logs",
        extra_env={
            "SWITCHBOARD_USAGE_STREAM": f"sbbench:{db_name}:usage",
            "SWITCHBOARD_BUDGET_PREFIX": f"sbbench:{db_name}:budget:",
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
            "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(token_delay),
        },
    )
    failed = 0
    try:
        await stack.start()
        router_proc = psutil.Process(stack.processes["router"].pid)
        metering_proc = psutil.Process(stack.processes["metering"].pid)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.metering}") as ch:
            metering = metering_pb2_grpc.MeteringServiceStub(ch)
            reply = await metering.CreateApiKey(
                metering_pb2.CreateApiKeyRequest(account_id="bench", name="bench")
            )
            # A key with a daily limit: every request reserves and settles in Redis.
            limited = await metering.CreateApiKey(
                metering_pb2.CreateApiKeyRequest(account_id="bench-limited", name="bench")
            )
            await metering.SetKeyLimits(
                metering_pb2.SetKeyLimitsRequest(
                    key_id=limited.api_key.id, limits=metering_pb2.SpendLimits(daily_usd="5000")
                )
            )
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports.router}")
        direct = direct_call(session, f"http://127.0.0.1:{stack.ports.demo}/v1/chat/completions")
        routed = router_call(router_pb2_grpc.RouterServiceStub(channel), reply.secret)
        budgeted = router_call(router_pb2_grpc.RouterServiceStub(channel), limited.secret)
        await drive(routed, 100, 8)  # warm-up: connections, caches, JIT-free but lazy imports
        await drive(budgeted, 100, 8)
        await drive(direct, 100, 8)
        print(
            f"\n20-chunk streaming completions, {requests} per row, upstream token gap "
            f"{token_delay * 1000:g} ms; logs in {state}/logs\n"
        )
        print(HEADER)
        for level in levels:
            total = max(requests, level * 4)
            ttft, seconds, failures = await drive(direct, total, level)
            print(Result("direct", level, ttft, seconds, failures).row(), flush=True)
            for name, call in (("router", routed), ("router+limit", budgeted)):
                before, meter_before = cpu_ms(router_proc), cpu_ms(metering_proc)
                ttft, seconds, failures = await drive(call, total, level)
                done = max(1, len(ttft))
                # Metering's share: writing these completions' usage (it drains as they end).
                cpu, meter = cpu_ms(router_proc) - before, cpu_ms(metering_proc) - meter_before
                result = Result(name, level, ttft, seconds, failures, cpu / done, meter / done)
                print(result.row(), flush=True)
                failed += failures
        await channel.close(None)
        await session.close()
    finally:
        stack.stop()
        await drop_database(admin, db_name)
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                server.stop()
    print(f"\nfailed requests: {failed}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--requests", type=int, default=1000, help="completions per row")
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds the upstream waits between tokens (0: chunks arrive back to back and "
        "may be coalesced; real providers space tokens out)",
    )
    args = parser.parse_args()
    return asyncio.run(run(args.concurrency, args.requests, args.token_delay))


if __name__ == "__main__":
    sys.exit(main())
