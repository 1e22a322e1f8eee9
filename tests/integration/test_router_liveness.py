"""Router liveness against a real Redis and Postgres: a router that stops beating is swept once.

A router is simulated with the pieces the real one uses (``switchboard_core.liveness``, the
``BudgetStore``, ``switchboard_router.inflight``'s records of a real ``generation.Generation``);
metering's ``Sweeper`` sweeps it, and the metering server's outbox consumer carries the FAILED
event it writes into the ledger.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore, Limits, Reservation, from_pico, to_pico
from switchboard_core.liveness import (
    DEFAULT_HEARTBEAT_TTL_SECONDS,
    DEFAULT_SWEEP_SECONDS,
    Liveness,
    Swept,
    generation_field,
    new_router_id,
)
from switchboard_core.money import ZERO, format_usd
from switchboard_core.usage_outbox import EVENT_FIELD, colocated
from switchboard_metering.sweeper import Sweeper
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, Finish, FinishEvent, Message, Role
from switchboard_router.generation import Generation, Hold, cost_of, new_generation_id
from switchboard_router.inflight import InFlight, progress, template
from switchboard_router.usage_sink import UsageSink, usage_event
from tests.integration.test_metering_app import eventually, running_metering, test_settings
from tests.unit.test_router_inflight import ROUTE

TTL = 0.3  # seconds: the simulated routers' heartbeat TTL
REQUEST = CompletionRequest(
    model="demo/m", messages=(Message.of(Role.USER, "hello there"),), max_tokens=500
)
LIMITS = Limits(total=Decimal(1))


@dataclass
class Deployment:
    """What routers and metering share: the prefix, the usage stream."""

    client: redis.Redis
    prefix: str
    stream: str

    @property
    def store(self) -> BudgetStore:
        return BudgetStore(self.client, self.prefix)

    @property
    def liveness(self) -> Liveness:
        return Liveness(self.client, self.prefix, self.stream)

    def sweeper(self, heartbeat_ttl: float = TTL) -> Sweeper:
        return Sweeper(
            self.client,
            self.prefix,
            self.stream,
            interval_seconds=60,
            heartbeat_ttl_seconds=heartbeat_ttl,
        )

    async def events(self) -> list[metering_pb2.UsageEvent]:
        entries: Any = await self.client.xrange(self.stream)
        return [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]) for _, f in entries]


@pytest.fixture
def deployment(redis_client: redis.Redis, redis_prefix: str) -> Deployment:
    tag = uuid.uuid4().hex[:8]
    return Deployment(redis_client, f"{redis_prefix}live:{tag}:", f"{redis_prefix}usage:{tag}")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def new_key() -> str:
    return f"key_{uuid.uuid4().hex[:16]}"


async def reserve(deployment: Deployment, key: str, router_id: str) -> Reservation:
    return await deployment.store.reserve(
        key, "acct-live", Decimal("0.002"), LIMITS, ttl_seconds=600, holder=router_id
    )


def generation(key: str, reservation: Reservation | None) -> Generation:
    now = time.monotonic()
    return Generation(
        id=new_generation_id(),
        attempt=0,
        caller=Caller(key, "acct-live", LIMITS),
        request=REQUEST,
        route=ROUTE,
        started=now - 0.2,
        create_time=time.time(),
        streamed=True,
        first_event_at=now,
        hold=Hold(reservation) if reservation is not None else None,
    )


async def beat(deployment: Deployment, router_id: str, *gens: Generation, new: bool) -> None:
    """One heartbeat of the simulated router, as InFlight writes it."""
    fields = {generation_field(g.id, g.attempt): g for g in gens}
    await deployment.liveness.beat(
        router_id,
        TTL,
        templates={f: template(g) for f, g in fields.items()} if new else {},
        progress={f: progress(g) for f, g in fields.items()},
    )


async def until_dead(deployment: Deployment, router_id: str) -> None:
    async def dead() -> bool:
        return router_id in await deployment.liveness.dead()

    await eventually(dead, timeout=5 * TTL + 2)


async def test_a_dead_routers_generation_is_recorded_once_and_its_reservation_settled_once(
    deployment: Deployment,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    db: asyncpg.Connection,
) -> None:
    router_id, key = new_router_id(), new_key()
    reservation = await reserve(deployment, key, router_id)
    streaming = generation(key, reservation)
    await beat(deployment, router_id, streaming, new=True)
    streaming.text_chars = 400  # streamed since: about 100 completion tokens
    await beat(deployment, router_id, streaming, new=False)
    assert (await deployment.store.key_spend(key, "acct-live")).reserved == Decimal("0.002")

    await until_dead(deployment, router_id)  # killed: no more heartbeats
    swept = await deployment.sweeper().sweep()

    usage = streaming.final_usage()
    cost = cost_of(ROUTE, usage)
    assert usage.completion_tokens == 100 and cost > 0
    assert swept == [Swept(router_id, generations=1, reservations=1)]
    spend = await deployment.store.key_spend(key, "acct-live")
    assert (spend.reserved, spend.total) == (ZERO, from_pico(to_pico(cost)))
    [event] = await deployment.events()
    assert (event.generation_id, event.key_id, event.model_id) == (streaming.id, key, "demo/m")
    assert event.status == metering_pb2.GENERATION_STATUS_FAILED
    assert event.usage.completion_tokens == 100 and event.usage.estimated
    assert event.usage.prompt_tokens == usage.prompt_tokens
    assert event.cost_usd == format_usd(cost)
    assert event.latency_ms >= event.time_to_first_token_ms >= 0

    # A second sweep, another replica's sweeper, and the router's own late settle (it was only
    # paused) change nothing.
    assert await deployment.sweeper().sweep() == []
    assert await deployment.liveness.sweep(router_id, deployment.store) is None
    await deployment.store.settle(reservation, cost)
    assert await deployment.store.key_spend(key, "acct-live") == spend
    assert len(await deployment.events()) == 1
    assert router_id not in await deployment.liveness.dead()

    outbox = test_settings(redis_prefix, stream=deployment.stream)
    async with running_metering(database_url, redis_url, outbox):

        async def in_ledger() -> bool:
            count = "SELECT count(*) FROM generations WHERE generation_id = $1"
            return bool(await db.fetchval(count, streaming.id))

        await eventually(in_ledger)
        await asyncio.sleep(0.3)  # anything more would have arrived by now
    rows = await db.fetch(
        "SELECT status, completion_tokens, estimated, cost FROM generations"
        " WHERE generation_id = $1",
        streaming.id,
    )
    assert [tuple(r) for r in rows] == [(metering_pb2.GENERATION_STATUS_FAILED, 100, True, cost)]


async def test_two_sweepers_at_once_settle_and_record_once(deployment: Deployment) -> None:
    router_id, key = new_router_id(), new_key()
    reservation = await reserve(deployment, key, router_id)
    streaming = generation(key, reservation)
    streaming.text_chars = 40
    await beat(deployment, router_id, streaming, new=True)
    await until_dead(deployment, router_id)

    results = await asyncio.gather(*(deployment.sweeper().sweep() for _ in range(4)))

    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert len(await deployment.events()) == 1
    spend = await deployment.store.key_spend(key, "acct-live")
    cost = cost_of(ROUTE, streaming.final_usage())
    assert (spend.reserved, spend.total) == (ZERO, from_pico(to_pico(cost)))


async def test_a_reservation_without_a_generation_is_released_to_zero(
    deployment: Deployment,
) -> None:
    router_id, key = new_router_id(), new_key()
    await reserve(deployment, key, router_id)  # died before the first token
    await beat(deployment, router_id, new=True)
    await until_dead(deployment, router_id)

    assert await deployment.sweeper().sweep() == [Swept(router_id, 0, 1)]
    spend = await deployment.store.key_spend(key, "acct-live")
    assert (spend.reserved, spend.total) == (ZERO, ZERO)
    assert await deployment.events() == []


async def test_a_live_router_is_never_swept(deployment: Deployment) -> None:
    router_id, key = new_router_id(), new_key()
    await reserve(deployment, key, router_id)
    streaming = generation(key, None)
    for _ in range(4):  # beating well within its TTL
        await beat(deployment, router_id, streaming, new=True)
        assert await deployment.sweeper().sweep() == []
        await asyncio.sleep(TTL / 3)
    assert (await deployment.store.key_spend(key, "acct-live")).reserved == Decimal("0.002")
    assert await deployment.events() == []

    # Found dead, but beating again before the sweep ran: the script leaves it alone.
    await until_dead(deployment, router_id)
    await beat(deployment, router_id, streaming, new=False)
    assert await deployment.liveness.sweep(router_id, deployment.store) is None
    assert (await deployment.store.key_spend(key, "acct-live")).reserved == Decimal("0.002")


async def test_nothing_is_swept_until_redis_has_been_up_for_a_heartbeat_ttl(
    deployment: Deployment,
) -> None:
    router_id = new_router_id()
    await beat(deployment, router_id, new=True)
    await until_dead(deployment, router_id)
    # Heartbeats expire by the clock while Redis is down: a Redis that (seemingly) started
    # less than a TTL ago may have expired live routers' heartbeats.
    assert await deployment.sweeper(heartbeat_ttl=10**9).sweep() == []
    assert router_id in await deployment.liveness.dead()


async def test_the_router_registers_in_the_background_and_publishing_removes_the_record(
    deployment: Deployment,
) -> None:
    router_id, key = new_router_id(), new_key()
    inflight = InFlight(deployment.liveness, router_id, interval_seconds=0.1, ttl_seconds=TTL)
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # metering: never reached here
    sink = UsageSink(deployment.client, deployment.stream, channel, inflight)
    records = colocated(deployment.stream, f":gen:{router_id}")
    inflight.start()
    try:
        reservation = await reserve(deployment, key, router_id)
        streaming = generation(key, reservation)
        inflight.track(streaming)

        async def registered() -> bool:
            return bool(await deployment.client.hlen(records))

        await eventually(registered, timeout=2)
        usage = streaming.final_usage()
        done = usage_event(
            streaming,
            metering_pb2.GENERATION_STATUS_COMPLETED,
            usage,
            cost_of(ROUTE, usage),
            FinishEvent(Finish.STOP, "stop"),
        )
        await sink.publish(done)  # the event and the record's removal, in one MULTI/EXEC
        assert await deployment.client.hlen(records) == 0
        assert [e.status for e in await deployment.events()] == [done.status]
        await deployment.store.settle(reservation, cost_of(ROUTE, usage))
        await asyncio.sleep(0.3)  # heartbeats go on; the record stays gone
        assert await deployment.client.hlen(records) == 0
    finally:
        await inflight.stop()
        await channel.close(None)
    # Drained and holding nothing: it left for good, there is nothing to sweep.
    assert await deployment.liveness.dead() == []
    assert not await deployment.client.sismember(
        colocated(deployment.stream, ":routers"), router_id
    )


def test_a_killed_routers_reservations_return_within_fifteen_seconds_by_default() -> None:
    assert DEFAULT_HEARTBEAT_TTL_SECONDS + DEFAULT_SWEEP_SECONDS <= 15
