"""``make bench-concurrency``: many slow streams at once through the router; does any wait?

Starts the real processes (demo upstream, catalog, metering, router; TLS as deployed, or
plaintext with ``--plaintext``) on free ports against Postgres and Redis (DATABASE_URL /
REDIS_URL, else the local ones, else embedded), sets the demo upstream to send ``--chunks``
chunks ``--token-delay`` seconds apart, then opens ``--streams`` streaming completions at
once over ``--connections`` client connections, each started once. It prints the latency of
each stream's first message (p50/p90/p99/max and the share past 1 s), stream completion
time, the router's CPU over the pass and its event-loop stall p99 (from its
``switchboard_event_loop_lag_seconds`` histogram). A stream whose first message waits for
other streams to end shows up as a first-message latency of the order of a stream's length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.load import quantile
from bench.stacks import bench_stack
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.channels import CLIENT_CHANNEL_OPTIONS
from switchboard_devstack.stack import Stack

LAG_METRIC = "switchboard_event_loop_lag_seconds"
START_TIMEOUT = 30.0


@dataclass
class Pass:
    """One pass: each stream's first-message latency and duration (seconds), and failures."""

    first: list[float]
    durations: list[float]
    failures: int
    seconds: float
    router_cpu_seconds: float
    lag_p99: float | None  # the router's event-loop stall p99 over the pass (None: no metric)
    client_cpu_seconds: float = 0.0  # the load clients' own CPU over the pass
    router_wait_seconds: float = 0.0  # the router runnable but waiting for a CPU (schedstat)


def run_delay(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (Linux schedstat,
    summed over its threads; 0 where the kernel does not tell): a busy machine, not the
    router's own work, when it is large."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


@dataclass
class RouterProcesses:
    """The router: one process, or a supervisor and its workers (SWITCHBOARD_WORKERS), whose
    CPU and CPU waits are summed."""

    main: psutil.Process

    def all(self) -> list[psutil.Process]:
        return [self.main, *self.main.children(recursive=True)]

    def cpu_seconds(self) -> float:
        return sum(sum(process.cpu_times()[:2]) for process in self.all())

    def run_delay(self) -> float:
        return sum(run_delay(process.pid) for process in self.all())


def lag_buckets(text: str) -> dict[float, float]:
    """The cumulative buckets (upper bound → count) of the loop-lag histogram in ``text``."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LAG_METRIC}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of what was observed between the
    two scrapes (a histogram's resolution: the bound, not an interpolation)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return bounds[-1]


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[float, float]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with session.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return lag_buckets(await response.text())


def channels(address: str, ca: bytes | None, count: int) -> list[grpc.aio.Channel]:
    """``count`` channels to the router, each its own connection (a distinct channel argument
    keeps gRPC from sharing one subchannel between them); TLS trusting ``ca`` unless None."""
    out = []
    for index in range(count):
        options = [*CLIENT_CHANNEL_OPTIONS, ("switchboard.bench.connection", index)]
        if ca is None:
            out.append(grpc.aio.insecure_channel(address, options=options))
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            out.append(grpc.aio.secure_channel(address, credentials, options=options))
    return out


async def one_stream(
    stub: router_pb2_grpc.RouterServiceAsyncStub, key: str, chunks: int, deadline: float
) -> tuple[float, float, float]:
    """One completion: seconds to its first message, to its end; when it was sent (wall)."""
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Say words.")],
        max_tokens=chunks,
    )
    metadata = (("authorization", f"Bearer {key}"),)
    sent = time.time()
    start = time.perf_counter()
    first = 0.0
    ended = False
    async for message in stub.StreamCompletion(request, metadata=metadata, timeout=deadline):
        if not first:
            first = time.perf_counter() - start
        ended = ended or message.WhichOneof("event") == "end"
    if not ended:
        raise RuntimeError("stream without an end")
    return first, time.perf_counter() - start, sent


@dataclass(frozen=True)
class Load:
    """What one client process drives: ``streams`` streams over ``connections`` channels."""

    address: str
    ca: bytes | None
    key: str
    streams: int
    connections: int
    chunks: int
    deadline: float


async def drive(load: Load, start_at: float) -> dict[str, object]:
    """Connect (one short stream per channel), wait until ``start_at`` (time.time()), then
    open every stream at once; the first-message and stream times, the failures."""
    chans = channels(load.address, load.ca, load.connections)
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in chans]
    try:
        await asyncio.gather(*(one_stream(s, load.key, 1, load.deadline) for s in stubs))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        results = await asyncio.gather(
            *(
                one_stream(stubs[i % len(stubs)], load.key, load.chunks, load.deadline)
                for i in range(load.streams)
            ),
            return_exceptions=True,
        )
        cpu = time.process_time() - cpu
    finally:
        for channel in chans:
            await channel.close(None)
    done = [r for r in results if isinstance(r, tuple)]
    failures = [repr(r)[:300] for r in results if not isinstance(r, tuple)]
    return {"done": done, "failures": failures, "cpu": cpu}


async def worker(load: Load, start_at: float, out: Path) -> None:
    result = await drive(load, start_at)
    await asyncio.to_thread(out.write_text, json.dumps(result))


async def run_pass(stack: Stack, key: str, args: argparse.Namespace, state: Path) -> Pass:
    """One pass, the streams spread over ``args.clients`` client processes (one Python
    process receiving 20,000 messages a second would itself be the bottleneck)."""
    router = RouterProcesses(psutil.Process(stack.processes["router"].pid))
    ca = None if stack.plaintext else stack.pki.read("operator")[2]
    clients = args.clients
    loads = [
        Load(
            stack.address("router"),
            ca,
            key,
            args.streams // clients + (1 if i < args.streams % clients else 0),
            max(1, args.connections // clients),
            args.chunks,
            args.chunks * args.token_delay * 4 + 30,
        )
        for i in range(clients)
    ]
    start_at = time.time() + 3.0 + 0.5 * clients  # every client connected by then
    outs = [state / f"client-{i}.json" for i in range(clients)]
    procs = []
    for load, out in zip(loads, outs, strict=True):
        spec = json.dumps({**load.__dict__, "ca": (load.ca or b"").decode() or None})
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.concurrency",
                "--worker",
                spec,
                "--start-at",
                str(start_at),
                "--out",
                str(out),
            )
        )
    async with aiohttp.ClientSession() as session:
        await asyncio.sleep(max(0.0, start_at - time.time() - 0.2))
        lag_before = await scrape(session, stack.ports.router_metrics)
        cpu_before = router.cpu_seconds()
        wait_before = router.run_delay()
        began = time.perf_counter()
        codes = [await p.wait() for p in procs]
        seconds = time.perf_counter() - began
        cpu = router.cpu_seconds() - cpu_before
        waited = router.run_delay() - wait_before
        lag_after = await scrape(session, stack.ports.router_metrics)
    if any(codes):
        raise RuntimeError(f"a client process failed: exit codes {codes}")
    parts = [json.loads(out.read_text()) for out in outs]
    done = [tuple(d) for part in parts for d in part["done"]]
    failures = [f for part in parts for f in part["failures"]]
    for failure in failures[:3]:
        print(f"failed: {failure}", file=sys.stderr)
    lag = bucket_quantile(lag_before, lag_after, 0.99) if lag_after else None
    client_cpu = sum(float(part["cpu"]) for part in parts)
    return Pass(
        [d[0] for d in done],
        [d[1] for d in done],
        len(failures),
        seconds,
        cpu,
        lag,
        client_cpu,
        waited,
    )


def report(result: Pass, streams: int, connections: int, stream_seconds: float) -> str:
    if not result.first:
        return f"{streams} streams: all {result.failures} failed"
    first = result.first
    late = sum(1 for f in first if f > 1.0) / len(first)
    lag = "n/a" if result.lag_p99 is None else f"<= {result.lag_p99 * 1000:g} ms"
    d = result.durations
    lines = [
        f"{streams} streams over {connections} connections, each ~{stream_seconds:g} s long",
        f"first message s: p50 {quantile(first, 0.5):.3f}  p90 {quantile(first, 0.9):.3f}"
        f"  p99 {quantile(first, 0.99):.3f}  max {max(first):.3f}   >1 s: {late:.1%}",
        f"stream s:        p50 {quantile(d, 0.5):.2f}  p99 {quantile(d, 0.99):.2f}"
        f"  max {max(d):.2f}   pass {result.seconds:.1f} s",
        f"router CPU: {result.router_cpu_seconds / result.seconds:.2f} cores over the pass;"
        f" event-loop stall p99 {lag}; load clients"
        f" {result.client_cpu_seconds / result.seconds:.2f} cores",
        f"router waiting for a CPU (runnable, not running): {result.router_wait_seconds:.1f} s"
        f" of the pass's {result.seconds:.1f} s; failed streams: {result.failures}",
    ]
    return "\n".join(lines)


async def api_key(stack: Stack) -> str:
    async with stack.channel("metering") as channel:
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        reply = await metering.CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id="bench-concurrency", name="bench")
        )
    return str(reply.secret)


async def run(args: argparse.Namespace) -> int:
    env = {
        "SWITCHBOARD_DEMO_REPLY_TOKENS": str(args.chunks),
        "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(args.token_delay),
    }
    stream_seconds = args.chunks * args.token_delay
    failed = 0
    workers = {"router": {"SWITCHBOARD_WORKERS": str(args.router_workers)}}
    async with bench_stack("sbconc", env, plaintext=args.plaintext, service_env=workers) as stack:
        assert stack.log_dir is not None
        state = stack.log_dir.parent  # the clients' result files go beside the logs
        key = await api_key(stack)
        for _ in range(args.passes):
            result = await run_pass(stack, key, args, state)
            print(f"router processes: {args.router_workers}", flush=True)
            print(report(result, args.streams, args.connections, stream_seconds), flush=True)
            failed += result.failures
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--streams", type=int, default=1000, help="streams at once (1000)")
    parser.add_argument("--connections", type=int, default=32, help="client connections (32)")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per stream (200)")
    parser.add_argument("--token-delay", type=float, default=0.05, help="chunk gap s (0.05)")
    parser.add_argument("--passes", type=int, default=1, help="passes (1)")
    parser.add_argument("--plaintext", action="store_true", help="no TLS on the stack")
    parser.add_argument("--clients", type=int, default=4, help="load client processes (4)")
    parser.add_argument(
        "--router-workers", type=int, default=1, help="router processes (SWITCHBOARD_WORKERS, 1)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        spec["ca"] = spec["ca"].encode() if spec["ca"] else None
        asyncio.run(worker(Load(**spec), args.start_at, args.out))
        return 0
    bounds = {
        "streams": 10_000,
        "connections": 1_000,
        "chunks": 10_000,
        "passes": 20,
        "clients": 16,
        "router_workers": 64,
    }
    for name, bound in bounds.items():
        if not 1 <= getattr(args, name) <= bound:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and {bound}")
    if not 0 <= args.token_delay <= 1:
        parser.error("--token-delay must be between 0 and 1 second")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
