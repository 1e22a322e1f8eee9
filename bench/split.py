"""``make bench-split``: where the router's CPU over the bare relay goes, per completion and per
chunk, and what metering's work on the same cores does to the router's TTFT.

One plaintext stack and the bare relay (:mod:`bench.bare_relay`) against the same demo upstream.

**Per completion and per chunk.** For each reply length (default 2, 20 and 100 content chunks,
5 ms apart, so each chunk is its own message) the same streamed completions run through the bare
relay and the router (a key without limits) at C=32, in alternating order, for a few rounds. A
least-squares line through the median CPU per completion of each length splits each server's
cost into a fixed part (the call, the upstream request, and for the router: authentication,
planning, the usage event) and a marginal part per chunk (SSE, parse, one gRPC message). The
router/bare ratio of each part says which one the 1.2x target of issue 12 is missed on. Each
row also prints the delta messages a completion arrived in: the router sends chunks that reached
it together as one message (the bare relay never does), which lowers its per-chunk part when
it falls behind.

**TTFT and metering.** At C=1 (20 chunks back to back) the time to the first token straight at
the upstream, through the bare relay and through the router, then through the router again with
the metering process stopped (SIGSTOP; the usage events wait in the Redis stream and are
consumed once it resumes, so nothing is lost). On a machine whose few cores also run metering and
Postgres, metering's ledger writes land between the router's requests; the row without it shows
what they add to the router's TTFT tail (a deployment runs metering elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.load import Result, direct_call, drive, measure, quantile, router_call
from bench.stacks import BareRelay, deploy, set_workload
from switchboard.router.v1 import router_pb2_grpc
from switchboard_devstack.storage import drop_database, find_postgres, find_redis

DEFAULT_CHUNKS = (2, 20, 100)
TOKEN_DELAY = 0.005
CONCURRENCY = 32
MIN_ROW = 320  # completions per row at least (CPU times tick in 10 ms)


@dataclass(frozen=True)
class Split:
    """CPU per completion as ``fixed + per_chunk * chunks`` (microseconds)."""

    fixed_us: float
    per_chunk_us: float


def split(points: Sequence[tuple[int, float]]) -> Split:
    """The least-squares line through ``(chunks, ms per completion)`` points, in microseconds.
    Needs at least two different chunk counts."""
    if len({chunks for chunks, _ in points}) < 2:
        raise ValueError("a split needs at least two different chunk counts")
    slope, intercept = statistics.linear_regression(
        [float(chunks) for chunks, _ in points], [ms for _, ms in points]
    )
    return Split(intercept * 1000, slope * 1000)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def split_table(router: Split, bare: Split) -> str:
    return "\n".join(
        (
            f"{'':<18}{'bare relay':>12}{'router':>12}{'router - bare':>15}{'ratio':>8}",
            f"{'fixed, us/compl':<18}{bare.fixed_us:>12.0f}{router.fixed_us:>12.0f}"
            f"{router.fixed_us - bare.fixed_us:>15.0f}{_ratio(router.fixed_us, bare.fixed_us):>8}",
            f"{'per chunk, us':<18}{bare.per_chunk_us:>12.1f}{router.per_chunk_us:>12.1f}"
            f"{router.per_chunk_us - bare.per_chunk_us:>15.1f}"
            f"{_ratio(router.per_chunk_us, bare.per_chunk_us):>8}",
        )
    )


def ttft_line(name: str, samples: list[float], direct: list[float]) -> str:
    """p50/p90/p99 of ``samples`` and each over ``direct``'s."""
    cells = []
    for q in (0.5, 0.9, 0.99):
        own = quantile(samples, q) * 1000
        cells.append(f"p{round(q * 100)} {own:5.2f} ({own - quantile(direct, q) * 1000:+.2f})")
    return f"{name:<26}" + "   ".join(cells)


async def run(chunk_counts: Sequence[int], requests: int, rounds: int, ttft_requests: int) -> int:
    state = Path(tempfile.mkdtemp(prefix="sbsplit-"))
    admin, embedded_pg = find_postgres(None, state / "pg")
    redis, embedded_redis = find_redis(None, state / "redis")
    deployment = await deploy("plain", admin, redis, state, TOKEN_DELAY, plaintext=True)
    demo = f"http://127.0.0.1:{deployment.stack.ports.demo}/v1/chat/completions"
    bare = await BareRelay.start(demo, state / "bare.log")
    failures = 0
    try:
        router_stub = router_pb2_grpc.RouterServiceStub(deployment.channel)
        bare_stub = router_pb2_grpc.RouterServiceStub(bare.channel)
        cpu: dict[str, dict[int, list[float]]] = {"router": {}, "bare": {}}
        deltas: dict[str, list[int]] = {"router": [], "bare": []}
        print(f"CPU ms per completion, chunks {TOKEN_DELAY * 1000:g} ms apart, C={CONCURRENCY}")
        for chunks in chunk_counts:
            await set_workload(deployment.stack, chunks, TOKEN_DELAY)
            total = max(MIN_ROW, requests * 20 // max(chunks, 20))
            calls = {
                "bare": (router_call(bare_stub, "", chunks, deltas["bare"]), bare.process),
                "router": (
                    router_call(router_stub, deployment.unlimited, chunks, deltas["router"]),
                    deployment.router,
                ),
            }
            for call, process in calls.values():
                await measure("warm-up", call, 8, 64, process)
            for counts in deltas.values():
                counts.clear()
            for turn in range(rounds):
                order = list(calls) if turn % 2 == 0 else list(reversed(calls))
                for name in order:
                    call, process = calls[name]
                    row: Result = await measure(name, call, CONCURRENCY, total, process)
                    failures += row.failures
                    cpu[name].setdefault(chunks, []).append(row.cpu_ms_per_completion or 0.0)
            medians = {name: statistics.median(cpu[name][chunks]) for name in cpu}
            sent = {name: statistics.fmean(counts) for name, counts in deltas.items()}
            print(
                f"  {chunks:>4} chunks ({total} per row, {rounds} rounds): bare relay "
                f"{medians['bare']:.3f}, router {medians['router']:.3f} "
                f"({_ratio(medians['router'], medians['bare'])}); delta messages per "
                f"completion {sent['bare']:.1f} and {sent['router']:.1f}"
            )
        fits = {
            name: split([(chunks, statistics.median(values)) for chunks, values in rows.items()])
            for name, rows in cpu.items()
        }
        print("\n" + split_table(fits["router"], fits["bare"]) + "\n")

        await set_workload(deployment.stack, 20, 0.0)
        async with aiohttp.ClientSession() as session:
            paths = {
                "direct": direct_call(session, demo),
                "bare relay": router_call(bare_stub, ""),
                "router": router_call(router_stub, deployment.unlimited),
            }
            for call in paths.values():
                await drive(call, 100, 1)
            ttft: dict[str, list[float]] = {}
            for name, call in paths.items():
                ttft[name], _, failed = await drive(call, ttft_requests, 1)
                failures += failed
            deployment.metering.suspend()
            try:
                samples, _, failed = await drive(paths["router"], ttft_requests, 1)
                ttft["router, metering stopped"] = samples
                failures += failed
            finally:
                deployment.metering.resume()
        print(f"TTFT ms at C=1, 20 chunks back to back, {ttft_requests} each (over direct)")
        for name, samples in ttft.items():
            print("  " + ttft_line(name, samples, ttft["direct"]))
    finally:
        bare.proc.terminate()
        bare.proc.wait()
        deployment.stack.stop()
        await drop_database(admin, deployment.database)
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                server.stop()
    if failures:
        print(f"{failures} requests failed", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=list(DEFAULT_CHUNKS),
        help="reply lengths in content chunks (at least two different; default 2 20 100)",
    )
    parser.add_argument(
        "--requests", type=int, default=600, help="completions per row at 20 chunks (600)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per reply length (3)")
    parser.add_argument("--ttft-requests", type=int, default=2000, help="completions per TTFT row")
    args = parser.parse_args()
    if len(set(args.chunks)) < 2 or min(args.chunks) < 1:
        parser.error("--chunks needs at least two different counts, each at least 1")
    if args.requests < 1 or args.rounds < 1 or args.ttft_requests < 100:
        parser.error("--requests and --rounds must be at least 1, --ttft-requests at least 100")
    return asyncio.run(run(args.chunks, args.requests, args.rounds, args.ttft_requests))


if __name__ == "__main__":
    sys.exit(main())
