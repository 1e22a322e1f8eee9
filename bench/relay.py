"""``make bench``: streaming load through the router versus straight at its upstream.

Starts the real processes (demo upstream, catalog, metering, router) on free ports against
Postgres and Redis (DATABASE_URL/REDIS_URL, else the local ones, else embedded) twice: as
deployed, with mutual TLS between the services and TLS on the router's port, and in plaintext
(``SWITCHBOARD_INSECURE_PLAINTEXT``, service keys instead of certificates). Both run the same
authorization interceptor; the interceptor's own cost per call is measured apart, in process.
Then for each concurrency it runs the same 20-chunk streaming completions (1) straight at the
demo upstream over HTTP/SSE, (2) through each router over gRPC with a key without limits and
(3) through the TLS router with a key with a daily spend limit (each request reserves and
settles in Redis) and (4) with a key whose key and account both have rate limits (requests
and tokens per minute, concurrency) too high to refuse anything, so each request runs the
rate-limit script and releases its concurrency leases and corrects its tokens in Redis, and
(5) through each router's OpenAI-compatible HTTP edge (``POST /v1/chat/completions``, SSE,
TLS or plaintext as the router's port; :mod:`bench.edge_call`) with the unlimited key, and
prints time-to-first-token p50/p99, completions per second and the router's CPU milliseconds
per completion (from the router process's own CPU time), then the TLS/plaintext ratios, what
the rate-limit check adds and what the HTTP edge costs over the gRPC path. It fails if
requests fail, or if the rate-limited rows were not checked (the router's
``switchboard_router_rate_limit_checks_total`` did not move).
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
from prometheus_client.parser import text_string_to_metric_families

from bench.edge_call import edge_call, edge_session
from bench.interceptor import interceptor_microseconds
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_demo.upstream import reply_words
from switchboard_devstack.pki import DevPki
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

    def ttft_p50_ms(self) -> float:
        return statistics.median(self.ttft) * 1000 if self.ttft else 0.0

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


async def deploy(
    name: str, admin: str, redis: str, state: Path, token_delay: float, *, plaintext: bool
) -> Deployment:
    db_name = f"sbbench_{uuid.uuid4().hex[:8]}"
    database = await create_database(admin, db_name)
    stack = Stack(
        database,
        redis,
        DevPki.ensure(state / "pki"),
        ports=Ports.free(),
        log_dir=state / f"logs-{name}",
        extra_env={
            "SWITCHBOARD_USAGE_STREAM": f"sbbench:{db_name}:usage",
            "SWITCHBOARD_BUDGET_PREFIX": f"sbbench:{db_name}:budget:",
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
            "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(token_delay),
        },
        plaintext=plaintext,
    )
    await stack.start()
    async with stack.channel("metering") as ch:
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
        # A key whose key and account limits are all set: one script checks six limits.
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
    return Deployment(
        name,
        stack,
        db_name,
        psutil.Process(stack.processes["router"].pid),
        psutil.Process(stack.processes["metering"].pid),
        stack.channel("router", bearer=""),
        reply.secret,
        limited.secret,
        rated.secret,
    )


async def rate_checks(session: aiohttp.ClientSession, deployment: Deployment) -> float:
    """The router's count of admitted rate-limit checks (its Prometheus endpoint)."""
    url = f"http://127.0.0.1:{deployment.stack.ports.router_metrics}/metrics"
    async with session.get(url) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "switchboard_router_rate_limit_checks_total"
                and labels.get("scope") == "caller"
                and labels.get("outcome") == "admitted"
            ):
                return float(sample.value)
    return 0.0


async def measured(
    deployment: Deployment,
    name: str,
    key: str,
    level: int,
    total: int,
    call: Callable[[], Awaitable[float]] | None = None,
) -> Result:
    """One row: ``call`` (default: a gRPC stream with ``key``) ``total`` times."""
    call = call or router_call(router_pb2_grpc.RouterServiceStub(deployment.channel), key)
    before, meter_before = cpu_ms(deployment.router), cpu_ms(deployment.metering)
    ttft, seconds, failures = await drive(call, total, level)
    done = max(1, len(ttft))
    # Metering's share: writing these completions' usage (it drains as they end).
    cpu = cpu_ms(deployment.router) - before
    meter = cpu_ms(deployment.metering) - meter_before
    return Result(name, level, ttft, seconds, failures, cpu / done, meter / done)


def edge_versus_grpc(level: int, edge: Result, grpc_row: Result) -> str:
    """What the HTTP edge costs over the gRPC path: router CPU per completion and TTFT p50."""
    cpu = (edge.cpu_ms_per_completion or 0) - (grpc_row.cpu_ms_per_completion or 0)
    ratio = (edge.cpu_ms_per_completion or 0) / (grpc_row.cpu_ms_per_completion or 1)
    return (
        f"  C={level:<4} {edge.name:<11} router CPU/completion {cpu:+.2f} ms ({ratio:.2f}x),"
        f" TTFT p50 {edge.ttft_p50_ms() - grpc_row.ttft_p50_ms():+.2f} ms"
    )


async def run(levels: list[int], requests: int, token_delay: float) -> int:
    state = Path(tempfile.mkdtemp(prefix="sbbench-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    deployments: list[Deployment] = []
    failed = 0
    try:
        tls = await deploy("tls", admin, redis, state, token_delay, plaintext=False)
        deployments.append(tls)
        plain = await deploy("plaintext", admin, redis, state, token_delay, plaintext=True)
        deployments.append(plain)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        demo = f"http://127.0.0.1:{tls.stack.ports.demo}/v1/chat/completions"
        direct = direct_call(session, demo)
        # The HTTP edge (OpenAI-compatible) of each router: the same completion, as SSE.
        edges = {d.name: edge_session(d.stack) for d in deployments}
        edge = {
            d.name: edge_call(*edges[d.name], d.unlimited, PROMPT, EXPECTED_TEXT)
            for d in deployments
        }
        for deployment in deployments:  # warm-up: connections, caches, lazy imports
            await measured(deployment, "warm", deployment.unlimited, 8, 100)
            await measured(deployment, "warm", "", 8, 100, edge[deployment.name])
        await measured(tls, "warm", tls.limited, 8, 100)
        await measured(tls, "warm", tls.rate_limited, 8, 100)
        await drive(direct, 100, 8)
        print(
            f"\n20-chunk streaming completions, {requests} per row, upstream token gap "
            f"{token_delay * 1000:g} ms; logs in {state}\n"
        )
        print(f"interceptor (in process): {interceptor_microseconds():.1f} us per call\n")
        print(HEADER)
        ratios: list[str] = []
        rate_costs: list[str] = []
        edge_costs: list[str] = []
        checks_before = await rate_checks(session, tls)
        rated_completions = 0
        for level in levels:
            total = max(requests, level * 4)
            ttft, seconds, failures = await drive(direct, total, level)
            print(Result("direct", level, ttft, seconds, failures).row(), flush=True)
            rows = [
                await measured(tls, "router tls", tls.unlimited, level, total),
                await measured(plain, "router plain", plain.unlimited, level, total),
                await measured(tls, "tls+limit", tls.limited, level, total),
                await measured(tls, "tls+rate", tls.rate_limited, level, total),
                await measured(tls, "edge tls", "", level, total, edge["tls"]),
                await measured(plain, "edge plain", "", level, total, edge["plaintext"]),
            ]
            rated_completions += len(rows[3].ttft)
            for row in rows:
                print(row.row(), flush=True)
                failed += row.failures
            secure, bare, rated = rows[0], rows[1], rows[3]
            edge_costs += [
                edge_versus_grpc(level, rows[4], secure),
                edge_versus_grpc(level, rows[5], bare),
            ]
            rate_costs.append(
                f"  C={level:<4} router CPU/completion "
                f"{(rated.cpu_ms_per_completion or 0) - (secure.cpu_ms_per_completion or 0):+.2f}"
                f" ms, TTFT p50 {rated.ttft_p50_ms() - secure.ttft_p50_ms():+.2f} ms"
            )
            ratios.append(
                f"  C={level:<4} router CPU/completion TLS/plaintext "
                f"{(secure.cpu_ms_per_completion or 0) / (bare.cpu_ms_per_completion or 1):.2f}x"
                f", TTFT p50 {secure.ttft_p50_ms():.2f} vs {bare.ttft_p50_ms():.2f} ms"
            )
        print("\nTLS and mutual TLS versus plaintext (same run):")
        print("\n".join(ratios))
        print("\nRate limits (tls+rate versus router tls, same run):")
        print("\n".join(rate_costs))
        print("\nHTTP edge (OpenAI SSE) versus the gRPC path, same router, same run:")
        print("\n".join(edge_costs))
        checked = await rate_checks(session, tls) - checks_before
        if checked < rated_completions:
            print(f"rate limits were not checked ({checked:g} of {rated_completions})")
            failed += 1
        await session.close()
        for edge_client, _ in edges.values():
            await edge_client.close()
    finally:
        for deployment in deployments:
            await deployment.channel.close(None)
            deployment.stack.stop()
            await drop_database(admin, deployment.database)
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
