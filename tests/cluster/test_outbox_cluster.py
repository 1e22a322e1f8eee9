"""The usage outbox on a real Redis Cluster: the router's sink adds an event and deletes the
generation's in-flight records in ONE script (they share the stream's hash slot), and
metering's consumer reads, writes to the ledger, dead-letters what it cannot parse, and
acknowledges; split into streams, each router's events go to its stream's slot and metering
drains every stream the routers registered."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from switchboard_core.liveness import Delivery, Liveness, generation_field, template_value
from switchboard_core.usage_outbox import (
    EVENT_FIELD,
    colocated,
    registry_key,
    stream_for,
    usage_streams,
)
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Ledger
from switchboard_metering.outbox import OutboxConsumer
from switchboard_metering.outbox_streams import UsageStreams
from switchboard_router.inflight import InFlight
from switchboard_router.spool import spool_dir
from switchboard_router.usage_sink import UsageSink
from tests.integration.test_metering_app import eventually, new_key_id, usage_event


async def test_the_sink_publishes_in_one_script_and_the_consumer_drains_once(
    cluster: redis.Redis, prefix: str, metering_pool: asyncpg.Pool
) -> None:
    stream = prefix + "usage"
    liveness = Liveness(cluster, prefix, stream)
    inflight = InFlight(liveness, "router-c", 2.0, 10.0)
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # metering's RPC: never needed here
    sink = UsageSink(cluster, stream, channel, inflight)
    key = new_key_id()
    events = [usage_event(key) for _ in range(5)]
    fields = [generation_field(e.generation_id, e.attempt) for e in events]
    await liveness.beat(
        "router-c",
        10.0,
        templates={f: template_value("-", b"") for f in fields},
        progress={},
    )
    records = colocated(stream, ":gen:router-c")
    # The router's spool is named after where its client points: a cluster client too.
    assert spool_dir("", cluster, stream, prefix) == spool_dir("", cluster, stream, prefix)
    assert key_slot(records.encode()) == key_slot(stream.encode())
    try:
        for event in events:
            await sink.publish(event)
    finally:
        await channel.close(None)
    assert await cluster.hlen(records) == 0  # deleted with the events, in their script
    assert await cluster.xlen(stream) == 5
    await cluster.xadd(stream, {EVENT_FIELD: b"not a usage event"})

    settings = OutboxSettings(
        stream=stream, consumer=f"c-{uuid.uuid4().hex[:6]}", block_ms=50, max_backoff_seconds=0.2
    )
    consumer = OutboxConsumer(cluster, Ledger(metering_pool), settings)
    consumer.start()
    try:

        async def drained() -> bool:
            try:
                pending: Any = await cluster.xpending(stream, settings.group)
            except ResponseError:  # the consumer has not made its group yet
                return False
            return pending["pending"] == 0 and await cluster.xlen(stream) == 0

        await eventually(drained, timeout=10)
    finally:
        await consumer.stop()
    written = await metering_pool.fetchval(
        "SELECT count(*) FROM generations WHERE key_id = $1", key
    )
    assert written == 5
    dead: Any = await cluster.xrange(settings.dead_letter_stream)
    assert [entry[EVENT_FIELD] for _, entry in dead] == [b"not a usage event"]


async def members(client: redis.Redis, key: str) -> list[bytes]:
    found: Any = await client.smembers(key)
    return list(found)


async def test_a_split_outbox_publishes_each_stream_in_its_slot_and_metering_drains_all(
    cluster: redis.Redis, prefix: str, metering_pool: asyncpg.Pool
) -> None:
    base = prefix + "split"
    streams = usage_streams(base, 3)
    assert len({key_slot(s.encode()) for s in streams}) == 3  # three slots, not one
    ids: dict[str, str] = {}
    while len(ids) < 2:  # two router processes on two different streams
        router_id = f"router-{uuid.uuid4().hex[:6]}"
        ids.setdefault(stream_for(router_id, streams), router_id)
    (a_stream, a), (b_stream, b) = ids.items()
    registry = registry_key(base)
    router_a = Liveness(cluster, prefix, a_stream, streams=streams, registry=registry)
    router_b = Liveness(cluster, prefix, b_stream, streams=streams, registry=registry)
    key = new_key_id()
    ours, theirs = usage_event(key), usage_event(key)
    ours_field = generation_field(ours.generation_id, 0)
    theirs_field = generation_field(theirs.generation_id, 0)
    await router_a.beat(a, 10.0, templates={ours_field: template_value("-", b"")}, progress={})
    await router_b.beat(b, 10.0, templates={theirs_field: template_value("-", b"")}, progress={})
    # a's own event and b's spooled one: two scripts, each in its stream's slot.
    await router_a.publish(
        [
            Delivery(ours.SerializeToString(), a, ours_field),
            Delivery(theirs.SerializeToString(), b, theirs_field),
        ]
    )
    assert await cluster.hlen(colocated(a_stream, f":gen:{a}")) == 0
    assert await cluster.hlen(colocated(b_stream, f":gen:{b}")) == 0
    assert {m.decode() for m in await members(cluster, registry)} == {a_stream, b_stream}

    settings = OutboxSettings(
        stream=base,
        consumer=f"c-{uuid.uuid4().hex[:6]}",
        block_ms=50,
        max_backoff_seconds=0.2,
        discover_seconds=0.1,
    )
    drained_streams = UsageStreams(
        cluster,
        Ledger(metering_pool),
        settings,
        prefix=prefix,
        sweep_seconds=60,
        heartbeat_ttl_seconds=10,
    )
    await drained_streams.start()
    try:
        assert set(drained_streams.streams) == {base, a_stream, b_stream}

        async def written() -> bool:
            count = "SELECT count(*) FROM generations WHERE key_id = $1"
            return bool(await metering_pool.fetchval(count, key) == 2)

        await eventually(written, timeout=10)
    finally:
        await drained_streams.stop()
