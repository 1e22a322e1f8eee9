"""``make bench-ledger`` section 2: real outbox consumers, one process each, drain a stream.

The events are ``XADD``-ed (as ``UsageSink`` writes them; timed apart, with Redis's CPU) to a
fresh stream, then ``consumers`` real ``OutboxConsumer`` processes (``python -m
bench.ledger_outbox SPEC``: one consumer each, one consumer group, as metering replicas run)
drain it into the real ledger. Timed from "go" (every worker connected) until the stream is
empty (an entry is deleted only after its batch commits); the ledger is then checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil
import redis.asyncio as redis

from bench.ingest import (
    Cpu,
    LocalRedis,
    TimedLedger,
    check_ledger,
    describe,
    filesystem,
    make_events,
    produce,
    total_cost,
)
from bench.ledger_figures import HEADER, Figure, cpu_parts
from bench.ledger_postgres import empty_ledger
from bench.ledger_redis import redis_cpu
from switchboard.metering.v1 import metering_pb2
from switchboard_core.db import create_pool
from switchboard_core.redis_client import create_redis
from switchboard_metering.config import OutboxSettings
from switchboard_metering.outbox import OutboxConsumer

WORKER_START_SECONDS = 60.0  # a consumer process connects within this, or the run fails
STALL_SECONDS = 30.0  # a drain fails when its stream stops shrinking this long
# A consumer blocks this long on an empty stream (metering: 1 s); shorter here so that a
# worker stops soon after the drain. Reads return at once while the stream has entries.
WORKER_BLOCK_MS = 100
POLL_SECONDS = 0.005
WORKER_EXIT_SECONDS = 5.0  # a worker told to stop exits within this, or is killed


class Worker:
    """One metering outbox consumer in its own process (``python -m bench.ledger_outbox``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.psutil = psutil.Process(process.pid)

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.ledger_outbox",
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def expect(self, timeout: float) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"consumer process {self.process.pid} exited")
        return line.decode().strip()

    async def send(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{word}\n".encode())
        await self.process.stdin.drain()

    def cpu_seconds(self) -> float:
        times = self.psutil.cpu_times()
        return times.user + times.system

    async def end(self) -> None:
        """Let it exit (it does after ``stop`` or when its stdin closes), else kill it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), WORKER_EXIT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def run_worker(spec: dict[str, Any]) -> None:
    """The consumer process: connect, say ``ready``, consume from ``go`` until ``stop``."""
    pool = await create_pool(spec["database"], min_size=2, max_size=4)
    client = create_redis(spec["redis"], timeout=WORKER_BLOCK_MS / 1000 + 2.0)
    ledger = TimedLedger(pool)
    settings = OutboxSettings(
        stream=spec["stream"],
        group=spec["group"],
        consumer=spec["consumer"],
        batch_size=spec["batch"],
        block_ms=WORKER_BLOCK_MS,
    )
    consumer = OutboxConsumer(client, ledger, settings)
    loop = asyncio.get_running_loop()

    async def line() -> str:  # "" when the parent is gone: stop then
        return str(await loop.run_in_executor(None, sys.stdin.readline)).strip()

    try:
        await client.ping()
        await pool.fetchval("SELECT 1")
        print("ready", flush=True)
        if await asyncio.wait_for(line(), WORKER_START_SECONDS) != "go":
            return
        consumer.start()
        await line()
        await consumer.stop()
        report = {"write": ledger.write_seconds, "batches": ledger.batches}
        print(json.dumps(report), flush=True)
    finally:
        await client.aclose()
        await pool.close()


@dataclass
class OutboxRun:
    """What every drain of section 2 shares."""

    pool: asyncpg.Pool
    client: redis.Redis
    database: str
    redis_url: str
    payloads: list[bytes]
    batch: int
    checkpoint: bool


async def drain(run: OutboxRun, consumers: int) -> tuple[Figure, Figure, bool]:
    pool, client, payloads, batch = run.pool, run.client, run.payloads, run.batch
    stream, group = f"sbledger:{uuid.uuid4().hex[:8]}:usage", "metering"
    await empty_ledger(pool, run.checkpoint)
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    server, started = await redis_cpu(client), time.perf_counter()
    await produce(client, stream, payloads)
    fill = Figure(
        "XADD to fill the stream (pipelined 500 deep, 4 tasks)",
        len(payloads),
        time.perf_counter() - started,
        {"python": None, "postgres": None, "redis": await redis_cpu(client) - server},
    )
    spec = {"database": run.database, "redis": run.redis_url, "stream": stream, "group": group}
    workers: list[Worker] = []
    try:
        for i in range(consumers):
            workers.append(await Worker.start({**spec, "consumer": f"bench-{i}", "batch": batch}))
        for worker in workers:
            if await worker.expect(WORKER_START_SECONDS) != "ready":
                raise RuntimeError("a consumer process did not start")
        before, children = await Cpu.sample(pool, client), [w.cpu_seconds() for w in workers]
        started = time.perf_counter()
        for worker in workers:
            await worker.send("go")
        await until_empty(client, stream)
        seconds = time.perf_counter() - started
        after = await Cpu.sample(pool, client)
        used = sum(w.cpu_seconds() - c for w, c in zip(workers, children, strict=True))
        reports = []
        for worker in workers:
            await worker.send("stop")
            reports.append(json.loads(await worker.expect(STALL_SECONDS)))
    finally:
        for worker in workers:
            await worker.end()
    dead = int(await client.xlen(f"{stream}:dead"))
    await client.delete(stream, f"{stream}:dead")
    cpu = {**cpu_parts(before, after), "python": used}
    who = f"{consumers} consumer process{'es' if consumers > 1 else ''}"
    figure = Figure(f"outbox drain: {who}, batches of {batch}", len(payloads), seconds, cpu)
    write = sum(r["write"] for r in reports) / consumers
    figure.extra = f"in Ledger.write {write / seconds:.0%} of the time"
    count = len(payloads)
    ok, figure.check = await check_ledger(pool, count, total_cost(parse_all(payloads)))
    if dead:
        figure.check += f"; {dead} dead-lettered"
    return fill, figure, ok and not dead


def parse_all(payloads: list[bytes]) -> list[metering_pb2.UsageEvent]:
    return [metering_pb2.UsageEvent.FromString(p) for p in payloads]


async def until_empty(client: redis.Redis, stream: str) -> None:
    """Poll ``XLEN`` until 0 (an entry is deleted after its batch commits); bounded."""
    left, moved = -1, time.monotonic()
    while (length := int(await client.xlen(stream))) > 0:
        if length != left:
            left, moved = length, time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            raise RuntimeError(f"outbox stalled: {length} entries left for {STALL_SECONDS} s")
        await asyncio.sleep(POLL_SECONDS)


async def consumers_section(
    pool: asyncpg.Pool,
    database: str,
    outbox: LocalRedis,
    *,
    events: int,
    levels: Sequence[int],
    batch: int,
    checkpoint: bool,
) -> bool:
    """Section 2, one drain per entry of ``levels`` (consumer processes); False on a failed
    check."""
    count = events
    payloads = [event.SerializeToString() for event in make_events(count, seed=5)]
    client = create_redis(outbox.url)
    run = OutboxRun(pool, client, database, outbox.url, payloads, batch, checkpoint)
    print(
        f"\n2. outbox consumers: {count:,} events in the stream, {await describe(client)}"
        f" (AOF on {filesystem(outbox.directory)}), one consumer group\n{HEADER}"
    )
    ok, figures = True, list[Figure]()
    try:
        for consumers in levels:
            fill, figure, good = await drain(run, consumers)
            ok &= good
            if not figures:
                print(fill.row(None))
            print(figure.row(figures[0] if figures else None), flush=True)
            figures.append(figure)
    finally:
        await client.aclose()
    for figure in figures:
        print(f"    {figure.name}: {figure.check}")
    if len(figures) > 1:
        print(
            f"    {levels[-1]} consumers / {levels[0]}: {figures[-1].rate / figures[0].rate:.2f}x"
            f" the events/s on {psutil.cpu_count()} cores shared with Postgres and Redis"
        )
    return ok


if __name__ == "__main__":
    asyncio.run(run_worker(json.loads(sys.argv[1])))
