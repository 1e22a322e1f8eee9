"""The usage outbox: Redis stream entries reach the ledger exactly once, and never get stuck."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Batch, Ledger, WriteResult
from switchboard_metering.outbox import OutboxConsumer
from tests.integration.test_metering_app import (
    eventually,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def xadd(client: redis.Redis, stream: str, *events: metering_pb2.UsageEvent) -> None:
    for event in events:
        await client.xadd(stream, {EVENT_FIELD: event.SerializeToString()})


async def drained(client: redis.Redis, outbox: OutboxSettings) -> bool:
    pending = await client.xpending(outbox.stream, outbox.group)
    return pending["pending"] == 0 and await client.xlen(outbox.stream) == 0


async def generations(db: asyncpg.Connection, key: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM generations WHERE key_id = $1", key))


async def rollup_requests(db: asyncpg.Connection, key: str) -> int:
    total = await db.fetchval("SELECT sum(requests) FROM usage_rollups WHERE key_id = $1", key)
    return int(total or 0)


async def test_entries_are_written_once_and_acknowledged(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    redis_client: redis.Redis,
    db: asyncpg.Connection,
) -> None:
    key = new_key_id()
    outbox = test_settings(redis_prefix, batch_size=7)
    events = [usage_event(key) for _ in range(20)]
    # Written before metering starts: the group must start from the stream's beginning.
    await xadd(redis_client, outbox.stream, *events[:10])
    async with running_metering(database_url, redis_url, outbox):
        await xadd(redis_client, outbox.stream, *events[10:], events[3])  # and one replay

        async def all_written() -> bool:
            return await generations(db, key) == 20 and await drained(redis_client, outbox)

        await eventually(all_written)
    assert await rollup_requests(db, key) == 20


async def test_malformed_entries_go_to_the_dead_letter_stream(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    redis_client: redis.Redis,
    db: asyncpg.Connection,
) -> None:
    key = new_key_id()
    outbox = test_settings(redis_prefix)
    invalid = usage_event(key, cost="-1")
    async with running_metering(database_url, redis_url, outbox):
        await redis_client.xadd(outbox.stream, {EVENT_FIELD: b"\xff\xfenot protobuf"})
        await redis_client.xadd(outbox.stream, {"other": b"1"})
        await redis_client.xadd(outbox.stream, {EVENT_FIELD: invalid.SerializeToString()})
        await xadd(redis_client, outbox.stream, usage_event(key), usage_event(key))

        async def good_ones_written() -> bool:
            return await generations(db, key) == 2 and await drained(redis_client, outbox)

        await eventually(good_ones_written)
    dead: Any = await redis_client.xrange(outbox.dead_letter_stream)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert reasons == ["not a serialized UsageEvent", "missing field e", "invalid event.cost_usd"]
    assert dead[2][1][EVENT_FIELD] == invalid.SerializeToString()


async def test_entries_of_a_dead_consumer_are_claimed(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    redis_client: redis.Redis,
    db: asyncpg.Connection,
) -> None:
    key = new_key_id()
    outbox = test_settings(redis_prefix, claim_idle_ms=300, claim_interval_seconds=0.1)
    await redis_client.xgroup_create(outbox.stream, outbox.group, id="0", mkstream=True)
    await xadd(redis_client, outbox.stream, *(usage_event(key) for _ in range(5)))
    # A consumer reads the entries, then dies before writing or acknowledging them.
    read: Any = await redis_client.xreadgroup(
        outbox.group, "dead-consumer", {outbox.stream: ">"}, count=10
    )
    assert len(read[0][1]) == 5
    async with running_metering(database_url, redis_url, outbox):

        async def claimed_and_written() -> bool:
            return await generations(db, key) == 5 and await drained(redis_client, outbox)

        await eventually(claimed_and_written)
    assert await rollup_requests(db, key) == 5


async def test_survives_postgres_dropping_its_connections(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    redis_client: redis.Redis,
    db: asyncpg.Connection,
) -> None:
    key = new_key_id()
    outbox = test_settings(redis_prefix)
    async with running_metering(database_url, redis_url, outbox):
        await xadd(redis_client, outbox.stream, usage_event(key))
        await eventually(lambda: _has(db, key, 1))
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 1
        await xadd(redis_client, outbox.stream, *(usage_event(key) for _ in range(3)))

        async def written() -> bool:
            return await generations(db, key) == 4 and await drained(redis_client, outbox)

        await eventually(written)
    assert await rollup_requests(db, key) == 4


async def _has(db: asyncpg.Connection, key: str, count: int) -> bool:
    return await generations(db, key) == count


class FlakyLedger(Ledger):
    """The real ledger, whose writes fail now and then as if Postgres dropped the connection
    (after the batch behind it was already read ahead)."""

    def __init__(self, pool: asyncpg.Pool, failing_calls: set[int]) -> None:
        super().__init__(pool)
        self.failing_calls = failing_calls
        self.calls = 0

    async def write(self, batch: Batch, *, source: str) -> WriteResult:
        self.calls += 1
        if self.calls in self.failing_calls:
            raise ConnectionResetError("connection reset by the test")
        return await super().write(batch, source=source)


@asynccontextmanager
async def consuming(
    database_url: str, redis_client: redis.Redis, outbox: OutboxSettings, failing: set[int]
) -> AsyncIterator[FlakyLedger]:
    """A consumer of ``outbox`` writing through a :class:`FlakyLedger` whose calls in
    ``failing`` fail; stopped on the way out."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    ledger = FlakyLedger(pool, failing_calls=failing)
    consumer = OutboxConsumer(redis_client, ledger, outbox)
    consumer.start()
    try:
        yield ledger
    finally:
        await consumer.stop()
        await pool.close()


async def written(
    db: asyncpg.Connection, client: redis.Redis, outbox: OutboxSettings, key: str, n: int
) -> None:
    """Until ``key`` has ``n`` ledger rows and the stream is drained."""

    async def done() -> bool:
        return await generations(db, key) == n and await drained(client, outbox)

    await eventually(done)


async def test_batches_read_ahead_of_a_failed_write_are_written_once(
    database_url: str, redis_prefix: str, redis_client: redis.Redis, db: asyncpg.Connection
) -> None:
    key = new_key_id()
    outbox = test_settings(redis_prefix, batch_size=5)
    events = [usage_event(key) for _ in range(60)]
    await xadd(redis_client, outbox.stream, *events)
    async with consuming(database_url, redis_client, outbox, {2, 5, 6}) as ledger:
        await written(db, redis_client, outbox, key, 60)
    assert await rollup_requests(db, key) == 60
    assert ledger.calls >= 12 + 3  # every batch once, the failed ones again


async def test_a_trickle_lingers_into_one_transaction(
    database_url: str, redis_prefix: str, redis_client: redis.Redis, db: asyncpg.Connection
) -> None:
    key = new_key_id()
    outbox = test_settings(redis_prefix, linger_seconds=0.5)
    async with consuming(database_url, redis_client, outbox, set()) as ledger:
        for _ in range(5):  # one event every 50 ms: each read would find one
            await xadd(redis_client, outbox.stream, usage_event(key))
            await asyncio.sleep(0.05)
        await written(db, redis_client, outbox, key, 5)
    assert ledger.calls == 1  # the first read found one event; the linger brought the rest
