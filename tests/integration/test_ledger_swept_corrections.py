"""Swept ledger rows are provisional: the router's own event replaces one, exactly once.

Metering's liveness sweep records a router's generations in flight as FAILED estimates marked
``swept`` when its heartbeat expires; a router that was only cut off finishes them and delivers
its own events later. Against a real Postgres (and Redis for the router-level case): the real
event replaces the swept row and corrects the rollups once, whatever the order, batching,
replays and concurrency; a swept event after the real one changes nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore, Limits
from switchboard_core.db import create_pool, migrate
from switchboard_core.errors import InvalidArgument
from switchboard_core.liveness import Liveness, generation_field, new_router_id
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.event_rules import COUNT_FIELDS
from switchboard_metering.ledger import Ledger
from switchboard_metering.ledger_corrections import EVENTS_CORRECTED
from switchboard_metering.sweeper import Sweeper
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, Finish, FinishEvent, Message, Role
from switchboard_router.generation import Generation, Hold, cost_of, new_generation_id
from switchboard_router.inflight import InFlight, progress, template
from switchboard_router.usage_sink import UsageSink
from switchboard_router.usage_sink import usage_event as router_event
from tests.integration.test_metering_app import (
    eventually,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)
from tests.unit.test_router_inflight import ROUTE

_ROW = (
    "status, finish_reason, native_finish_reason, estimated, cost, latency_ms, ttft_ms,"
    f" swept, {', '.join(COUNT_FIELDS)}"
)


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=8)
    await migrate(pool, "metering", MIGRATIONS)
    yield pool
    await pool.close()


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> Ledger:
    return Ledger(pool)


def real_event(key: str, generation_id: str, when: datetime) -> metering_pb2.UsageEvent:
    """What the router told its client: 10 + 20 tokens, completed."""
    return usage_event(key, generation_id, when=when, cost="0.00005", prompt=10, completion=20)


def swept_event(key: str, generation_id: str, when: datetime) -> metering_pb2.UsageEvent:
    """What the sweep recorded from the router's last heartbeat: a FAILED estimate."""
    event = usage_event(key, generation_id, when=when, cost="0.000023", prompt=13, completion=5)
    event.status = metering_pb2.GENERATION_STATUS_FAILED
    event.finish_reason = common_pb2.FINISH_REASON_ERROR
    event.native_finish_reason = ""
    event.usage.estimated = True
    event.latency_ms = 400
    event.swept = True
    return event


def pair(key: str | None = None) -> tuple[metering_pb2.UsageEvent, metering_pb2.UsageEvent]:
    key = key or new_key_id()
    generation_id, when = f"gen-{uuid.uuid4().hex}", datetime.now(UTC) - timedelta(minutes=1)
    return swept_event(key, generation_id, when), real_event(key, generation_id, when)


async def row(pool: asyncpg.Pool, event: metering_pb2.UsageEvent) -> tuple[Any, ...]:
    rows = await pool.fetch(
        f"SELECT {_ROW} FROM generations WHERE generation_id = $1 AND attempt = $2",
        event.generation_id,
        event.attempt,
    )
    assert len(rows) == 1
    return tuple(rows[0])


def as_row(event: metering_pb2.UsageEvent) -> tuple[Any, ...]:
    return (
        event.status,
        event.finish_reason,
        event.native_finish_reason,
        event.usage.estimated,
        Decimal(event.cost_usd),
        event.latency_ms,
        event.time_to_first_token_ms,
        event.swept,
        *(getattr(event.usage, name) for name in COUNT_FIELDS),
    )


async def assert_rollups_are_the_rows(
    pool: asyncpg.Pool | asyncpg.Connection, key: str
) -> tuple[Any, ...]:
    """The key's rollups equal the sums of its ledger rows, cell by cell; returns the total."""
    sums = ", ".join(f"sum({name})::bigint" for name in ("requests", *COUNT_FIELDS)) + ", sum(cost)"
    from_rows = ", ".join(
        ["count(*)::bigint", *(f"sum({name})::bigint" for name in COUNT_FIELDS), "sum(cost)"]
    )
    cell = "model_id, provider_id, date_trunc('hour', created_at, 'UTC')"
    rolled = await pool.fetch(
        f"SELECT model_id, provider_id, bucket_start, {sums} FROM usage_rollups"
        " WHERE key_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        key,
    )
    ledger = await pool.fetch(
        f"SELECT {cell}, {from_rows} FROM generations WHERE key_id = $1"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        key,
    )
    assert [tuple(r) for r in rolled] == [tuple(r) for r in ledger]
    total = await pool.fetchrow(f"SELECT {from_rows} FROM generations WHERE key_id = $1", key)
    assert total is not None
    return tuple(total)


async def test_a_real_event_replaces_the_swept_row_and_corrects_the_rollups(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    swept, real = pair()
    before = EVENTS_CORRECTED.labels("rpc")._value.get()
    assert (await ledger.record([swept], source="outbox")).recorded == 1
    assert await row(pool, swept) == as_row(swept)

    result = await ledger.record([real], source="rpc")

    assert (result.recorded, result.corrected, result.duplicates) == (0, 1, 0)
    assert await row(pool, real) == as_row(real)
    total = await assert_rollups_are_the_rows(pool, real.key_id)
    assert total[0] == 1 and total[-1] == Decimal("0.00005")
    assert EVENTS_CORRECTED.labels("rpc")._value.get() == before + 1
    # GetGeneration shows the row as the router reported it.
    got = (await ledger.get_generation(real.generation_id)).generation
    assert (got.swept, got.cost_usd, got.status) == (False, "0.00005", real.status)


async def test_a_swept_event_after_the_real_one_is_a_duplicate(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    swept, real = pair()
    assert (await ledger.record([real], source="rpc")).recorded == 1
    result = await ledger.record([swept], source="outbox")
    assert (result.recorded, result.corrected, result.duplicates) == (0, 0, 1)
    assert await row(pool, real) == as_row(real)
    assert (await assert_rollups_are_the_rows(pool, real.key_id))[-1] == Decimal("0.00005")


async def test_a_correction_happens_once_however_often_the_real_event_comes(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    swept, real = pair()
    await ledger.record([swept], source="outbox")
    assert (await ledger.record([real], source="rpc")).corrected == 1
    changed = metering_pb2.UsageEvent()
    changed.CopyFrom(real)
    changed.latency_ms += 1  # a replay is a duplicate even if a detail differs
    for again in ([real], [real, real], [changed], [swept, real]):
        result = await ledger.record(again, source="outbox")
        assert (result.recorded, result.corrected, result.duplicates) == (0, 0, len(again))
    assert await row(pool, real) == as_row(real)
    total = await assert_rollups_are_the_rows(pool, real.key_id)
    assert total[0] == 1 and total[-1] == Decimal("0.00005")


@pytest.mark.parametrize("real_first", [True, False])
async def test_a_batch_with_both_keeps_the_real_event(
    pool: asyncpg.Pool, ledger: Ledger, real_first: bool
) -> None:
    key = new_key_id()
    new_swept, new_real = pair(key)  # neither in the ledger yet
    old_swept, old_real = pair(key)  # the swept one recorded already
    await ledger.record([old_swept], source="outbox")
    batch = [new_real, new_swept, old_real, old_swept]
    if not real_first:
        batch = [new_swept, new_real, old_swept, old_real]

    result = await ledger.record(batch, source="outbox")

    assert (result.recorded, result.corrected, result.duplicates) == (1, 1, 2)
    assert await row(pool, new_real) == as_row(new_real)
    assert await row(pool, old_real) == as_row(old_real)
    total = await assert_rollups_are_the_rows(pool, key)
    assert total[0] == 2 and total[-1] == Decimal("0.0001")


async def test_a_real_event_of_another_key_or_model_does_not_move_the_row(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    swept, real = pair()
    await ledger.record([swept], source="outbox")
    for field, value in (("key_id", new_key_id()), ("model_id", "demo/other")):
        other = metering_pb2.UsageEvent()
        other.CopyFrom(real)
        setattr(other, field, value)
        result = await ledger.record([other], source="rpc")
        assert (result.recorded, result.corrected, result.duplicates) == (0, 0, 1)
    assert await row(pool, swept) == as_row(swept)
    assert (await ledger.record([real], source="rpc")).corrected == 1


async def test_a_correction_passes_the_checks_an_insert_does(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    swept, real = pair()
    await ledger.record([swept], source="outbox")
    bad = metering_pb2.UsageEvent()
    bad.CopyFrom(real)
    bad.usage.cached_tokens = bad.usage.prompt_tokens + 1  # more cached than the prompt
    with pytest.raises(InvalidArgument):
        await ledger.record([bad], source="rpc")
    assert await row(pool, swept) == as_row(swept)


async def test_concurrent_writers_correct_each_swept_row_once(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    key = new_key_id()
    pairs = [pair(key) for _ in range(40)]
    # Half the generations were swept before anything else; the other half race their
    # swept and real events in.
    settled, racing = pairs[:20], pairs[20:]
    await ledger.record([swept for swept, _ in settled], source="outbox")
    rng = random.Random(15)
    batches: list[list[metering_pb2.UsageEvent]] = []
    for _ in range(12):
        events = [e for p in rng.sample(pairs, 15) for e in p if rng.random() < 0.8]
        rng.shuffle(events)
        batches.append(events)
    batches.append([e for p in pairs for e in p])  # every event at least once
    batches.append([real for _, real in settled])  # and the settled ones' real events again

    results = await asyncio.gather(*(ledger.record(b, source="outbox") for b in batches))

    assert sum(r.corrected for r in results) >= len(settled)
    assert sum(r.recorded for r in results) + sum(r.corrected for r in results) <= 2 * len(pairs)
    assert sum(r.recorded + r.corrected + r.duplicates for r in results) == sum(map(len, batches))
    # Each generation's row was inserted once and corrected at most once.
    assert sum(r.recorded for r in results) == len(racing)
    for _, real in pairs:
        assert await row(pool, real) == as_row(real)
    total = await assert_rollups_are_the_rows(pool, key)
    assert total[0] == len(pairs) and total[-1] == Decimal("0.00005") * len(pairs)


async def test_the_same_real_events_from_many_writers_correct_once(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    key = new_key_id()
    pairs = [pair(key) for _ in range(30)]
    await ledger.record([swept for swept, _ in pairs], source="outbox")
    reals = [real for _, real in pairs]
    rng = random.Random(16)
    batches = [rng.sample(reals, len(reals)) for _ in range(6)]

    results = await asyncio.gather(*(ledger.record(b, source="rpc") for b in batches))

    assert sum(r.corrected for r in results) == len(pairs)
    assert sum(r.recorded for r in results) == 0
    total = await assert_rollups_are_the_rows(pool, key)
    assert total[0] == len(pairs) and total[-1] == Decimal("0.00005") * len(pairs)


# The router: a generation streams, the heartbeat lapses (Redis silent for the router), the
# sweep records it, then the stream completes and the router publishes what the client got.

TTL = 0.3
REQUEST = CompletionRequest(
    model="demo/m", messages=(Message.of(Role.USER, "hello there"),), max_tokens=500
)


async def test_a_swept_live_routers_own_event_is_what_the_ledger_keeps(
    database_url: str, redis_url: str, redis_prefix: str, redis_client: redis.Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix, stream = f"{redis_prefix}swept:{tag}:", f"{redis_prefix}usage:{tag}"
    liveness, store = Liveness(redis_client, prefix, stream), BudgetStore(redis_client, prefix)
    router_id, key = new_router_id(), new_key_id()
    limits = Limits(total=Decimal(1))
    reservation = await store.reserve(
        key, "acct-live", Decimal("0.002"), limits, ttl_seconds=600, holder=router_id
    )
    now = time.monotonic()
    streaming = Generation(
        id=new_generation_id(),
        attempt=0,
        caller=Caller(key, "acct-live", limits),
        request=REQUEST,
        route=ROUTE,
        started=now - 0.2,
        create_time=time.time(),
        streamed=True,
        first_event_at=now,
        hold=Hold(reservation),
    )
    field = generation_field(streaming.id, streaming.attempt)
    streaming.text_chars = 40  # about 10 completion tokens at the last heartbeat
    await liveness.beat(
        router_id,
        TTL,
        templates={field: template(streaming)},
        progress={field: progress(streaming)},
    )
    sweeper = Sweeper(redis_client, prefix, stream, interval_seconds=60, heartbeat_ttl_seconds=TTL)

    async def dead() -> bool:
        return router_id in await liveness.dead()

    await eventually(dead, timeout=5 * TTL + 2)
    assert len(await sweeper.sweep()) == 1
    entries: Any = await redis_client.xrange(stream)
    [swept] = [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]) for _, f in entries]
    assert swept.swept and swept.usage.estimated  # the template's flag survived the merge

    # The router was only cut off: the stream goes on and completes; the client is told this.
    streaming.text_chars = 400
    usage = streaming.final_usage()
    done = router_event(
        streaming,
        metering_pb2.GENERATION_STATUS_COMPLETED,
        usage,
        cost_of(ROUTE, usage),
        FinishEvent(Finish.STOP, "stop"),
    )
    assert done.usage.completion_tokens != swept.usage.completion_tokens
    query = f"SELECT {_ROW} FROM generations WHERE generation_id = $1"
    conn = await asyncpg.connect(database_url)
    try:
        async with running_metering(database_url, redis_url, test_settings(prefix, stream=stream)):

            async def stored(event: metering_pb2.UsageEvent) -> bool:
                found = await conn.fetchrow(query, streaming.id)
                return found is not None and tuple(found) == as_row(event)

            await eventually(lambda: stored(swept))  # the ledger holds the estimate first
            inflight = InFlight(liveness, router_id, interval_seconds=0.1, ttl_seconds=TTL)
            channel = grpc.aio.insecure_channel("127.0.0.1:9")  # metering: not reached here
            try:
                await UsageSink(redis_client, stream, channel, inflight).publish(done)
            finally:
                await channel.close(None)
            await eventually(lambda: stored(done))  # then what the client was told
        total = await assert_rollups_are_the_rows(conn, key)
        assert total[0] == 1 and total[-1] == Decimal(done.cost_usd)
    finally:
        await conn.close()
