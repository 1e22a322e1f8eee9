"""The usage outbox on a real Redis Cluster: the router's sink adds an event and deletes the
generation's in-flight records in ONE script (they share the stream's hash slot), and
metering's consumer reads, writes to the ledger, dead-letters what it cannot parse, and
acknowledges."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from switchboard_core.liveness import Liveness, generation_field, template_value
from switchboard_core.usage_outbox import EVENT_FIELD, colocated
from switchboard_metering.config import OutboxSettings
from switchboard_metering.ledger import Ledger
from switchboard_metering.outbox import OutboxConsumer
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
