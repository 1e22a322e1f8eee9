"""The usage outbox split into streams, against a real Redis and Postgres: each router writes its
own stream and registers it before writing, a spooled event of another router process goes to
that process's stream, and metering drains every registered stream into the ledger (and sweeps
the dead routers of each)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_core.liveness import Delivery, Liveness, generation_field, new_router_id
from switchboard_core.usage_outbox import (
    EVENT_FIELD,
    colocated,
    registry_key,
    stream_for,
    usage_streams,
)
from switchboard_router.inflight import progress, template
from tests.integration.test_metering_app import (
    eventually,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)
from tests.integration.test_router_liveness import generation

STREAMS = 4
TTL = 0.3  # the simulated routers' heartbeat TTL


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def base(redis_prefix: str) -> str:
    return f"{redis_prefix}usage:{uuid.uuid4().hex[:8]}"


def router_on(streams: tuple[str, ...], avoid: set[str]) -> tuple[str, str]:
    """A router id whose stream is none of ``avoid``, and that stream."""
    while True:
        router_id = new_router_id()
        if (stream := stream_for(router_id, streams)) not in avoid:
            return router_id, stream


def liveness(client: redis.Redis, base: str, stream: str) -> Liveness:
    """A sharded router's, as ``switchboard_router.app`` builds it."""
    return Liveness(
        client,
        base + ":budget:",
        stream,
        streams=usage_streams(base, STREAMS),
        registry=registry_key(base),
    )


async def events_in(client: redis.Redis, stream: str) -> list[metering_pb2.UsageEvent]:
    entries: Any = await client.xrange(stream)
    return [metering_pb2.UsageEvent.FromString(fields[EVENT_FIELD]) for _, fields in entries]


async def registered(client: redis.Redis, base: str) -> set[str]:
    members: Any = await client.smembers(registry_key(base))
    return {m.decode() for m in members}


async def test_each_router_registers_its_stream_before_writing_and_publishes_there(
    redis_client: redis.Redis, base: str
) -> None:
    streams = usage_streams(base, STREAMS)
    a, a_stream = router_on(streams, set())
    b, b_stream = router_on(streams, {a_stream})
    key = new_key_id()
    ours, theirs = generation(key, None), generation(key, None)
    ours_field = generation_field(ours.id, 0)
    theirs_field = generation_field(theirs.id, 0)
    router_a, router_b = (
        liveness(redis_client, base, a_stream),
        liveness(redis_client, base, b_stream),
    )

    await router_a.beat(a, TTL * 10, templates={ours_field: template(ours)}, progress={})
    assert await registered(redis_client, base) == {a_stream}
    assert await redis_client.hexists(colocated(a_stream, f":gen:{a}"), ours_field)
    # Router b's process wrote a record, then died; its spooled event is replayed by a.
    await router_b.beat(b, TTL * 10, templates={theirs_field: template(theirs)}, progress={})
    await redis_client.srem(registry_key(base), b_stream)  # as if no live router wrote it

    payload = usage_event(key, ours.id).SerializeToString()
    spooled = usage_event(key, theirs.id).SerializeToString()
    await router_a.publish([Delivery(payload, a, ours_field), Delivery(spooled, b, theirs_field)])

    assert [e.generation_id for e in await events_in(redis_client, a_stream)] == [ours.id]
    assert [e.generation_id for e in await events_in(redis_client, b_stream)] == [theirs.id]
    assert not await redis_client.exists(colocated(a_stream, f":gen:{a}"))
    assert not await redis_client.exists(colocated(b_stream, f":gen:{b}"))
    assert await registered(redis_client, base) == {a_stream, b_stream}
    assert not await redis_client.exists(base)  # nothing went to the unsplit stream


async def test_metering_drains_the_base_stream_and_every_registered_shard(
    database_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    base: str,
    db: asyncpg.Connection,
) -> None:
    key = new_key_id()
    early, late, elsewhere = f"{base}:1", f"{base}:3", f"{base}x:2"
    await redis_client.sadd(registry_key(base), early, f"{base}:dead", elsewhere)
    await redis_client.xadd(early, {EVENT_FIELD: usage_event(key).SerializeToString()})
    await redis_client.xadd(base, {EVENT_FIELD: usage_event(key).SerializeToString()})
    stray = usage_event(key).SerializeToString()
    await redis_client.xadd(elsewhere, {EVENT_FIELD: stray})  # listed, but no shard of ours
    outbox = test_settings("", stream=base, discover_seconds=0.1)
    async with running_metering(database_url, redis_url, outbox):

        async def rows(n: int) -> bool:
            count = "SELECT count(*) FROM generations WHERE key_id = $1"
            return bool(await db.fetchval(count, key) == n)

        await eventually(lambda: rows(2))  # the base stream and the shard registered before
        await redis_client.sadd(registry_key(base), late)  # a router with more streams
        await redis_client.xadd(late, {EVENT_FIELD: usage_event(key).SerializeToString()})
        await eventually(lambda: rows(3))
    for stream in (base, early, late):
        assert await redis_client.xlen(stream) == 0, stream  # acknowledged and deleted
    assert await redis_client.xlen(elsewhere) == 1


async def test_a_dead_router_on_a_shard_is_swept_into_the_ledger(
    database_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    base: str,
    db: asyncpg.Connection,
) -> None:
    streams = usage_streams(base, STREAMS)
    router_id, stream = router_on(streams, set())
    key = new_key_id()
    streaming = generation(key, None)
    field = generation_field(streaming.id, 0)
    router = liveness(redis_client, base, stream)
    await router.beat(router_id, TTL, templates={field: template(streaming)}, progress={})
    streaming.text_chars = 400  # about 100 completion tokens streamed before it died
    await router.beat(router_id, TTL, templates={}, progress={field: progress(streaming)})

    outbox = test_settings("", stream=base, discover_seconds=0.1)
    async with running_metering(
        database_url, redis_url, outbox, sweep_seconds=0.2, heartbeat_ttl_seconds=TTL
    ):

        async def in_ledger() -> bool:
            count = "SELECT count(*) FROM generations WHERE generation_id = $1"
            return bool(await db.fetchval(count, streaming.id))

        await eventually(in_ledger)
    row = await db.fetchrow(
        "SELECT status, completion_tokens, estimated FROM generations WHERE generation_id = $1",
        streaming.id,
    )
    assert tuple(row) == (metering_pb2.GENERATION_STATUS_FAILED, 100, True)
    assert not await redis_client.exists(colocated(stream, f":gen:{router_id}"))
