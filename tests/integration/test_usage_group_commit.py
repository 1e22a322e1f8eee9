"""The usage sink's group commit against a real Redis: completions ending while an outbox
write is in flight share the next write, every event lands once with its records gone, and a
group whose write fails sends each of its events down the fallback path on its own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.liveness import Liveness, generation_field
from switchboard_core.redis_client import RedisDeadline
from switchboard_core.usage_outbox import EVENT_FIELD, colocated
from switchboard_router import usage_sink
from switchboard_router.inflight import InFlight
from switchboard_router.usage_sink import UsageSink
from tests.faults.links import redis_proxy, through
from tests.faults.proxy import FaultProxy
from tests.integration.test_redis_deadlines import FakeMetering

N = 16


class CountingConnection(redis.Connection):
    """A real connection that counts the scripts it sends (one per outbox write)."""

    scripts = 0

    def pack_command(self, *args: Any) -> list[bytes]:
        if args and str(args[0]).upper() == "EVALSHA":
            CountingConnection.scripts += 1
        return super().pack_command(*args)


@pytest.fixture
async def counted(redis_url: str) -> AsyncIterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    await client.aclose()


@pytest.fixture
def stream(redis_prefix: str) -> str:
    return f"{redis_prefix}group:{uuid.uuid4().hex[:6]}:usage"


@pytest.fixture
async def metering() -> AsyncIterator[tuple[FakeMetering, grpc.aio.Channel]]:
    fake = FakeMetering()  # type: ignore[abstract]  # the rest answers UNIMPLEMENTED
    server = grpc.aio.server()
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield fake, channel
    await channel.close(None)
    await server.stop(None)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    link = redis_proxy(redis_url)
    yield link
    link.stop()


def event() -> metering_pb2.UsageEvent:
    return metering_pb2.UsageEvent(generation_id=f"gen-{uuid.uuid4().hex}", attempt=1)


def field_of(e: metering_pb2.UsageEvent) -> str:
    return generation_field(e.generation_id, e.attempt)


async def register(client: redis.Redis, stream: str, router_id: str, *fields: str) -> None:
    for kind in ("gen", "progress"):
        await client.hset(
            colocated(stream, f":{kind}:{router_id}"), mapping=dict.fromkeys(fields, b"- x")
        )


async def outbox(client: redis.Redis, stream: str) -> list[str]:
    entries: Any = await client.xrange(stream)
    return [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]).generation_id for _, f in entries]


@pytest.fixture
async def warm(
    counted: redis.Redis,
    stream: str,
    redis_prefix: str,
    metering: tuple[FakeMetering, grpc.aio.Channel],
) -> tuple[UsageSink, InFlight]:
    """Router ``router-a``'s sink on the counting client, its script loaded by a first event."""
    inflight = InFlight(Liveness(counted, redis_prefix, stream), "router-a", 2.0, 10.0)
    sink = UsageSink(counted, stream, metering[1], inflight)
    await sink.publish(event())
    return sink, inflight


async def records_left(client: redis.Redis, stream: str, router_id: str) -> int:
    gen = await client.hlen(colocated(stream, f":gen:{router_id}"))
    progress = await client.hlen(colocated(stream, f":progress:{router_id}"))
    return int(gen) + int(progress)


async def test_completions_ending_together_share_a_write_and_each_lands_once(
    warm: tuple[UsageSink, InFlight],
    redis_client: redis.Redis,
    stream: str,
    metering: tuple[FakeMetering, grpc.aio.Channel],
) -> None:
    sink, _ = warm
    events = [event() for _ in range(N)]
    await register(redis_client, stream, "router-a", *map(field_of, events))
    # A spooled event of a previous process on this spool, replayed meanwhile: its records
    # are another router id's, deleted in the same group.
    replayed = event()
    await register(redis_client, stream, "router-old", field_of(replayed))
    envelope = f"router-old {field_of(replayed)}\n".encode() + replayed.SerializeToString()

    CountingConnection.scripts = 0
    delivered = await asyncio.gather(
        *(sink.publish(e) for e in events), sink.deliver_spooled(envelope)
    )
    assert delivered[-1] is True
    # The first event goes at once; those ending meanwhile go together in the next write.
    assert 1 <= CountingConnection.scripts <= 2
    landed = await outbox(redis_client, stream)
    assert sorted(landed[1:]) == sorted(e.generation_id for e in [*events, replayed])
    assert await records_left(redis_client, stream, "router-a") == 0
    assert await records_left(redis_client, stream, "router-old") == 0
    assert metering[0].events == []


async def test_a_failed_group_write_sends_each_event_to_metering_on_its_own(
    warm: tuple[UsageSink, InFlight],
    redis_client: redis.Redis,
    stream: str,
    metering: tuple[FakeMetering, grpc.aio.Channel],
) -> None:
    sink, inflight = warm
    await redis_client.delete(stream)
    await redis_client.set(stream, b"not a stream")  # every XADD now fails (WRONGTYPE)
    events = [event() for _ in range(N)]
    await register(redis_client, stream, "router-a", *map(field_of, events))

    CountingConnection.scripts = 0
    await asyncio.gather(*(sink.publish(e) for e in events))
    assert 1 <= CountingConnection.scripts <= 2  # still grouped
    recorded = [e.generation_id for e in metering[0].events]
    assert sorted(recorded) == sorted(e.generation_id for e in events)  # each once
    # Nothing was written: the records stay until this router's next heartbeat deletes them.
    assert await records_left(redis_client, stream, "router-a") == 2 * N
    assert inflight._gone == set(map(field_of, events))


async def test_events_queued_behind_a_silent_redis_wait_no_longer_than_the_deadline(
    proxy: FaultProxy,
    redis_url: str,
    stream: str,
    redis_prefix: str,
    metering: tuple[FakeMetering, grpc.aio.Channel],
) -> None:
    deadline = 0.2
    client = redis.Redis.from_url(through(proxy, redis_url), socket_timeout=5)
    inflight = InFlight(Liveness(client, redis_prefix, stream), "router-a", 2.0, 10.0)
    sink = UsageSink(client, stream, metering[1], inflight, deadline=RedisDeadline(deadline))
    try:
        await sink.publish(event())
        await metering[1].channel_ready()
        proxy.set("blackhole")
        events = [event() for _ in range(N)]

        async def timed(e: metering_pb2.UsageEvent) -> float:
            started = time.monotonic()
            await sink.publish(e)
            return time.monotonic() - started

        waits = await asyncio.gather(*(timed(e) for e in events))
        assert max(waits) < deadline + 0.2  # the queued ones too, not a deadline each write
        recorded = [e.generation_id for e in metering[0].events]
        assert sorted(recorded) == sorted(e.generation_id for e in events)
    finally:
        proxy.set("pass")
        await client.aclose(close_connection_pool=True)


async def test_a_group_holds_at_most_max_group_events(
    warm: tuple[UsageSink, InFlight],
    counted: redis.Redis,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(usage_sink, "MAX_GROUP", 4)
    sink, _ = warm
    events = [event() for _ in range(1 + 4 * 5)]  # one written at once, then 20 queued
    CountingConnection.scripts = 0
    await asyncio.gather(*(sink.publish(e) for e in events))
    assert CountingConnection.scripts == 1 + 5  # the first alone, then groups of 4
    landed = set(await outbox(counted, stream))
    assert {e.generation_id for e in events} <= landed
