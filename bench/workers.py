"""``make bench-workers``: completions/s with 1 and with 2 router processes (SWITCHBOARD_WORKERS),
same workload, same run.

For each router-process count it starts the real stack (TLS as deployed; metering and the
catalog one process each) and runs the same streamed completions (20 chunks 5 ms apart, as
real providers space them, so nothing coalesces) at each concurrency, spread over
``--connections`` client connections (the kernel's SO_REUSEPORT hands out connections, not
calls, to the workers). Each row prints TTFT p50/p99, completions/s, the router's CPU per
completion (summed over its processes: the supervisor and every worker), metering's, the
bench client's own (one process: if it nears a core, the client is the limit) and how the
calls split over the workers; then the 2/1 ratios. The machine's load average is printed too:
on a shared machine other work competes for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from dataclasses import dataclass

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.concurrency import api_key, channels
from bench.load import HEADER, Call, Result, cpu_ms, drive, router_call
from bench.stacks import bench_stack, set_workload
from switchboard.router.v1 import router_pb2_grpc
from switchboard_core.workers import Worker
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Ports, Stack
from switchboard_devstack.storage import bindable, free_port

CHUNKS = 20
TOKEN_DELAY = 0.005
START_SECONDS = 60.0
HANDLED = "switchboard_grpc_server_handled_total"


@dataclass
class Row:
    workers: int
    result: Result
    client_cpu_ms: float
    split: list[float]  # StreamCompletion calls each worker served


def ports_for(workers: int) -> Ports:
    """Free ports, the router's metrics ports of every worker among them."""
    while True:
        base = free_port()
        try:
            extra = [Worker(i, workers).metrics_port(base) for i in range(workers)]
        except ValueError:  # past 65535
            continue
        if all(bindable(port) for port in extra):
            break
    free = Ports.free()
    return Ports(
        free.router,
        free.catalog,
        free.metering,
        free.demo,
        base,
        free.catalog_metrics,
        free.metering_metrics,
        free.router_http,
    )


async def handled(session: aiohttp.ClientSession, port: int) -> float:
    """One worker's StreamCompletion calls so far (its /metrics)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == HANDLED and sample.labels.get("grpc_method") == "StreamCompletion"
    )


async def worker_ports(session: aiohttp.ClientSession, stack: Stack, workers: int) -> list[int]:
    """Each router worker's metrics port, once every one serves (bounded)."""
    ports = [Worker(i, workers).metrics_port(stack.ports.router_metrics) for i in range(workers)]
    deadline = time.monotonic() + START_SECONDS
    for port in ports:
        while True:
            try:
                await handled(session, port)
                break
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no router worker serves metrics on {port}") from None
                await asyncio.sleep(0.1)
    return ports


def router_processes(stack: Stack) -> list[psutil.Process]:
    """The router's processes: the one started and, under a supervisor, its workers."""
    top = psutil.Process(stack.processes["router"].pid)
    return [top, *top.children()]


def rotating(calls: list[Call]) -> Call:
    """One call after another over ``calls`` (one per connection)."""
    turn = itertools.cycle(calls)

    async def one() -> float:
        return await next(turn)()

    return one


async def measure_setting(workers: int, args: argparse.Namespace) -> list[Row]:
    """Every concurrency's row with ``workers`` router processes."""
    env = {
        "SWITCHBOARD_DEMO_REPLY_TOKENS": str(CHUNKS),
        "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(TOKEN_DELAY),
    }
    rows = []
    scaled = {"router": {"SWITCHBOARD_WORKERS": str(workers)}}
    async with (
        bench_stack("sbworkers", env, service_env=scaled, ports=ports_for(workers)) as stack,
        aiohttp.ClientSession() as session,
    ):
        await set_workload(stack, CHUNKS, TOKEN_DELAY)
        key = await api_key(stack)
        ports = await worker_ports(session, stack, workers)
        routers = router_processes(stack)
        assert len(routers) == (workers + 1 if workers > 1 else 1)
        metering = psutil.Process(stack.processes["metering"].pid)
        client = psutil.Process()
        opened = channels(stack.address("router"), stack.pki.read(OPERATOR)[2], args.connections)
        try:
            stubs = [router_pb2_grpc.RouterServiceStub(channel) for channel in opened]
            call = rotating([router_call(stub, key, CHUNKS) for stub in stubs])
            await drive(call, 64, 16)  # warm: connections, caches, lazy imports
            for level in args.concurrency:
                total = max(args.requests, level * 4)
                split = [await handled(session, port) for port in ports]
                before = sum(cpu_ms(p) for p in routers), cpu_ms(metering), cpu_ms(client)
                ttft, seconds, failures = await drive(call, total, level)
                done = max(1, len(ttft))
                router_cpu = (sum(cpu_ms(p) for p in routers) - before[0]) / done
                meter_cpu = (cpu_ms(metering) - before[1]) / done
                result = Result(
                    f"{workers} router", level, ttft, seconds, failures, router_cpu, meter_cpu
                )
                split = [await handled(session, p) - b for p, b in zip(ports, split, strict=True)]
                row = Row(workers, result, (cpu_ms(client) - before[2]) / done, split)
                print(describe(row), flush=True)
                rows.append(row)
        finally:
            for channel in opened:
                await channel.close(None)
    return rows


def describe(row: Row) -> str:
    split = "/".join(f"{n:g}" for n in row.split)
    return f"{row.result.row()}{row.client_cpu_ms:>12.2f}   {split}"


def ratios(rows: list[Row], low: int, high: int) -> list[str]:
    """``high``/``low`` router processes, per concurrency: completions/s and CPU/completion."""
    lines = []
    by = {(r.workers, r.result.concurrency): r.result for r in rows}
    for (workers, level), result in sorted(by.items()):
        base = by.get((low, level))
        if workers != high or base is None or not base.rate() or not base.cpu_ms_per_completion:
            continue
        cpu = (result.cpu_ms_per_completion or 0) / base.cpu_ms_per_completion
        lines.append(
            f"  C={level}: completions/s {result.rate():.1f} / {base.rate():.1f} ="
            f" {result.rate() / base.rate():.2f}x; router CPU per completion {cpu:.2f}x"
        )
    return lines


async def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    print(
        f"streamed completions ({CHUNKS} chunks {TOKEN_DELAY * 1000:g} ms apart) over"
        f" {args.connections} connections; {psutil.cpu_count()} cores, load average"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine: other work"
        " competes for the same cores)"
    )
    print(f"{HEADER.splitlines()[0]}{'client cpu':>12}   calls per worker")
    print(f"{HEADER.splitlines()[1]}{'ms/compl':>12}")
    rows: list[Row] = []
    for workers in args.router_workers:
        rows += await measure_setting(workers, args)
    low, high = min(args.router_workers), max(args.router_workers)
    if low != high:
        print(f"\n{high}/{low} router processes:")
        print("\n".join(ratios(rows, low, high)))
    failed = sum(r.result.failures for r in rows)
    print(
        f"\nload average now {' '.join(f'{x:.2f}' for x in os.getloadavg())};"
        f" failed requests: {failed}; took {time.monotonic() - began:.0f} s"
    )
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--router-workers", type=int, nargs="+", default=[1, 2], help="router process counts"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--requests", type=int, default=1000, help="completions per row")
    parser.add_argument("--connections", type=int, default=16, help="client connections")
    args = parser.parse_args()
    if not all(1 <= w <= 64 for w in args.router_workers):
        parser.error("--router-workers must be between 1 and 64")
    if not all(1 <= c <= 10_000 for c in args.concurrency):
        parser.error("--concurrency must be between 1 and 10000")
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be between 1 and 100000")
    if not 1 <= args.connections <= 1024:
        parser.error("--connections must be between 1 and 1024")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
