"""``make bench``: streaming load through the router versus the bare-relay baseline and
straight at the upstream both call.

Starts the real processes (demo upstream, catalog, metering, router) on free ports against
Postgres and Redis (DATABASE_URL/REDIS_URL, else the local ones, else embedded) twice: as
deployed, with mutual TLS between the services and TLS on the router's port, and in plaintext
(``SWITCHBOARD_INSECURE_PLAINTEXT``, service keys instead of certificates). Both run the same
authorization interceptor; the interceptor's own cost per call is measured apart, in process.
It also starts the bare relay (:mod:`bench.bare_relay`: gRPC in, aiohttp SSE to the same demo
upstream, orjson, gRPC out, one message per chunk, uvloop; no auth, limits or ledger), the
floor the router is measured against.

Each workload sets the demo upstream's reply (chunks, and the gap between them: real providers
space tokens out, so nothing coalesces) and, for each of its concurrencies, runs the same
streaming completions (1) straight at the demo upstream over HTTP/SSE, (2) through the bare
relay, (3) through each router over gRPC with a key without limits, (4) through the TLS router
with a key with a daily spend limit (each request reserves and settles in Redis) and (5) with a
key whose key and account both have rate limits too high to refuse anything, and (6) through
each router's OpenAI-compatible HTTP edge (``POST /v1/chat/completions``, SSE;
:mod:`bench.edge_call`) with the unlimited key. Each row prints time-to-first-token p50/p99,
completions per second and the serving process's CPU milliseconds per completion (the
router's, or the bare relay's) and metering's. Then, per row of the same run: router/bare relay
ratios (CPU per completion, TTFT p50/p99, completions/s), the router's TTFT over direct,
metering's CPU per completion, TLS/plaintext, what the rate-limit check adds and what the HTTP
edge costs over gRPC. It fails if requests fail, or if the rate-limited rows were not checked
(the router's ``switchboard_router_rate_limit_checks_total`` did not move).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.edge_call import edge_call, edge_session
from bench.interceptor import interceptor_microseconds
from bench.load import (
    HEADER,
    PROMPT,
    Call,
    Result,
    direct_call,
    drive,
    measure,
    router_call,
)
from bench.relay_summary import Summary
from bench.stacks import BareRelay, Deployment, deploy, set_workload
from switchboard.router.v1 import router_pb2_grpc
from switchboard_demo.upstream import reply_words
from switchboard_devstack.storage import drop_database, find_postgres, find_redis

__all__ = ["HEADER", "Deployment", "Result", "measured"]


@dataclass(frozen=True)
class Workload:
    """The demo upstream's reply (content chunks, seconds between them) and the
    concurrencies it runs at; ``share`` scales the completions per row (long replies: fewer)."""

    name: str
    chunks: int
    token_delay: float
    levels: tuple[int, ...]
    share: float = 1.0


# Issue 12's table: back to back at C=1, 5 ms apart at C=32 and 256, 200 chunks 2 ms apart.
DEFAULT_WORKLOADS = (
    Workload("20 chunks back to back", 20, 0.0, (1,)),
    Workload("20 chunks 5 ms apart", 20, 0.005, (32, 256)),
    Workload("200 chunks 2 ms apart", 200, 0.002, (32,), share=0.25),
)


async def measured(
    deployment: Deployment,
    name: str,
    key: str,
    level: int,
    total: int,
    call: Call | None = None,
) -> Result:
    """One router row: ``call`` (default: a 20-chunk gRPC stream with ``key``) ``total``
    times, with the router's and metering's CPU per completion."""
    call = call or router_call(router_pb2_grpc.RouterServiceStub(deployment.channel), key)
    return await measure(name, call, level, total, deployment.router, deployment.metering)


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


@dataclass
class Bench:
    """Everything one run drives: both stacks, the bare relay and the HTTP clients."""

    tls: Deployment
    plain: Deployment
    bare: BareRelay
    session: aiohttp.ClientSession
    edges: dict[str, tuple[aiohttp.ClientSession, str]]

    def calls(self, chunks: int) -> dict[str, Call]:
        """Each path's one completion of ``chunks`` chunks."""
        expected = " ".join(reply_words(chunks))
        tls, plain = self.tls, self.plain
        demo = f"http://127.0.0.1:{tls.stack.ports.demo}/v1/chat/completions"

        def grpc_call(deployment: Deployment, key: str) -> Call:
            return router_call(router_pb2_grpc.RouterServiceStub(deployment.channel), key, chunks)

        return {
            "direct": direct_call(self.session, demo, chunks),
            "bare relay": router_call(
                router_pb2_grpc.RouterServiceStub(self.bare.channel), "", chunks
            ),
            "router tls": grpc_call(tls, tls.unlimited),
            "router plain": grpc_call(plain, plain.unlimited),
            "tls+limit": grpc_call(tls, tls.limited),
            "tls+rate": grpc_call(tls, tls.rate_limited),
            "edge tls": edge_call(*self.edges["tls"], tls.unlimited, PROMPT, expected),
            "edge plain": edge_call(*self.edges["plaintext"], plain.unlimited, PROMPT, expected),
        }

    async def row(self, name: str, call: Call, level: int, total: int) -> Result:
        if name == "direct":
            ttft, seconds, failures = await drive(call, total, level)
            return Result(name, level, ttft, seconds, failures)
        if name == "bare relay":
            return await measure(name, call, level, total, self.bare.process)
        deployment = self.plain if name.endswith("plain") else self.tls
        return await measure(name, call, level, total, deployment.router, deployment.metering)

    async def workload(self, workload: Workload) -> dict[str, Call]:
        """Switch both demo upstreams to ``workload`` and warm every path up (connections to
        the restarted upstream, caches, lazy imports)."""
        await set_workload(self.tls.stack, workload.chunks, workload.token_delay)
        await set_workload(self.plain.stack, workload.chunks, workload.token_delay)
        calls = self.calls(workload.chunks)
        for call in calls.values():
            await drive(call, 48, 8)
        return calls


async def start(exits: AsyncExitStack, admin: str, redis: str, state: Path) -> Bench:
    """Both stacks, the bare relay and the clients; each torn down by ``exits``."""

    async def teardown(deployment: Deployment) -> None:
        await deployment.channel.close(None)
        deployment.stack.stop()
        await drop_database(admin, deployment.database)

    deployments: list[Deployment] = []
    for name, plaintext in (("tls", False), ("plaintext", True)):
        deployment = await deploy(name, admin, redis, state, 0.0, plaintext=plaintext)
        exits.push_async_callback(teardown, deployment)
        deployments.append(deployment)
    tls, plain = deployments
    demo = f"http://127.0.0.1:{tls.stack.ports.demo}/v1/chat/completions"
    bare = await BareRelay.start(demo, state / "bare-relay.log")
    exits.push_async_callback(bare.stop)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    exits.push_async_callback(session.close)
    edges = {d.name: edge_session(d.stack) for d in deployments}
    for edge_client, _ in edges.values():
        exits.push_async_callback(edge_client.close)
    return Bench(tls, plain, bare, session, edges)


async def measure_all(bench: Bench, workloads: list[Workload], requests: int) -> int:
    """Every workload's rows, then the summary; returns the failed requests."""
    failed = 0
    summary = Summary()
    checks_before = await rate_checks(bench.session, bench.tls)
    rated = 0
    for workload in workloads:
        calls = await bench.workload(workload)
        print(f"\n{workload.name} (upstream token gap {workload.token_delay * 1000:g} ms)")
        print(HEADER)
        for level in workload.levels:
            total = max(int(requests * workload.share), level * 4)
            rows = {name: await bench.row(name, call, level, total) for name, call in calls.items()}
            for row in rows.values():
                print(row.row(), flush=True)
                failed += row.failures
            rated += len(rows["tls+rate"].ttft)
            summary.add(workload.name, workload.chunks, level, rows)
    summary.print()
    checked = await rate_checks(bench.session, bench.tls) - checks_before
    if checked < rated:
        print(f"rate limits were not checked ({checked:g} of {rated})")
        failed += 1
    return failed


async def run(workloads: list[Workload], requests: int) -> int:
    began = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="sbbench-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    async with AsyncExitStack() as exits:
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                exits.callback(server.stop)
        bench = await start(exits, admin, redis, state)
        print(f"\nstreaming completions, {requests} per row (fewer for long replies)")
        print(f"logs in {state}")
        print(f"interceptor (in process): {interceptor_microseconds():.1f} us per call")
        failed = await measure_all(bench, workloads, requests)
    print(f"\nfailed requests: {failed}; took {time.monotonic() - began:.0f} s")
    return 1 if failed else 0


def workloads_from(args: argparse.Namespace) -> list[Workload]:
    """The default workloads, or one made of --concurrency/--token-delay/--chunks."""
    if args.concurrency is None and args.token_delay is None and args.chunks is None:
        return list(DEFAULT_WORKLOADS)
    delay = 0.005 if args.token_delay is None else args.token_delay
    chunks = args.chunks or 20
    levels = tuple(args.concurrency or (1, 32, 256))
    return [Workload(f"{chunks} chunks {delay * 1000:g} ms apart", chunks, delay, levels)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="one workload at these (default: the table)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="completions per row")
    parser.add_argument(
        "--token-delay",
        type=float,
        help="seconds the upstream waits between chunks, for one workload (default 0.005 "
        "then; 0: back to back, chunks may be coalesced; real providers space them out)",
    )
    parser.add_argument("--chunks", type=int, help="content chunks per reply (default 20)")
    args = parser.parse_args()
    for name in ("requests", "chunks"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 100_000:
            parser.error(f"--{name} must be between 1 and 100000")
    if args.token_delay is not None and not 0 <= args.token_delay <= 1:
        parser.error("--token-delay must be between 0 and 1 second")
    if args.concurrency and not all(1 <= c <= 10_000 for c in args.concurrency):
        parser.error("--concurrency must be between 1 and 10000")
    return asyncio.run(run(workloads_from(args), args.requests))


if __name__ == "__main__":
    sys.exit(main())
