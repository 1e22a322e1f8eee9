"""The router's Redis calls against a silent (blackholed) and a refusing Redis, through the
in-tree fault proxy: every wait is bounded, limited keys are refused within a second, usage
events and settles that cannot reach Redis are kept (metering, else the local spool) and
delivered exactly once when it returns, and a command cut short leaves the pool clean."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.budget import BudgetStore, Limits
from switchboard_core.errors import Unavailable
from switchboard_core.liveness import Liveness, generation_field
from switchboard_core.redis_client import RedisDeadline, RedisKnownDown, create_redis
from switchboard_core.usage_outbox import EVENT_FIELD, colocated
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.inflight import InFlight
from switchboard_router.spool import Replayer, Spool
from switchboard_router.usage_sink import UsageSink
from tests.faults.links import redis_proxy, tcp_target, through
from tests.faults.proxy import FaultProxy
from tests.integration.test_router_admission import REQUEST, ROUTE

LIMITED = Caller("key_limited", "acct", Limits(daily=Decimal(1)))
DEADLINE = 0.5


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    link = redis_proxy(redis_url)
    yield link
    link.stop()


@pytest.fixture
async def proxied(proxy: FaultProxy, redis_url: str) -> AsyncIterator[redis.Redis]:
    """A client as the router makes it, through the proxy."""
    client = create_redis(through(proxy, redis_url), timeout=DEADLINE)
    yield client
    await client.aclose()


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}deadlines:{uuid.uuid4().hex[:6]}:"


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    """Metering's RecordUsage, keeping what it is sent (the ledger's own tests cover the rest)."""

    def __init__(self) -> None:
        self.events: list[metering_pb2.UsageEvent] = []

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.RecordUsageResponse:
        self.events.extend(request.events)
        return metering_pb2.RecordUsageResponse(recorded_count=len(request.events))


@pytest.fixture
async def metering() -> AsyncIterator[tuple[FakeMetering, FaultProxy]]:
    """A metering server, behind a fault proxy of its own."""
    fake = FakeMetering()  # type: ignore[abstract]  # the rest answers UNIMPLEMENTED
    server = grpc.aio.server()
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    link = FaultProxy(("127.0.0.1", port)).start()
    yield fake, link
    link.stop()
    await server.stop(None)


@pytest.fixture
async def channel(metering: tuple[FakeMetering, FaultProxy]) -> AsyncIterator[grpc.aio.Channel]:
    opened = grpc.aio.insecure_channel(metering[1].address)
    yield opened
    await opened.close(None)


def event(generation_id: str) -> metering_pb2.UsageEvent:
    return metering_pb2.UsageEvent(generation_id=generation_id, attempt=1, key_id="key_free")


async def outbox(client: redis.Redis, stream: str) -> list[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
    return [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]).generation_id for _, f in entries]


# --- redis-py's retries, and the budgets set here ---------------------------------------------


async def test_former_settings_multiply_attempts_against_a_silent_redis(
    proxy: FaultProxy, redis_url: str
) -> None:
    """redis-py 8 runs a script 3 times (two retries), and a connection idle past its health
    check first PINGs 3 times, each try reconnecting and waiting the socket timeout: up to 9
    timeouts. With the former 5 s timeouts and 30 s health checks that is 15 s to 45 s, the
    stalls the chaos run saw; scaled down here (0.2 s, 0.3 s) to keep the test short."""
    timeout = 0.2
    former = redis.Redis.from_url(
        through(proxy, redis_url),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=0.3,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.05, base=0.01), 2),
    )
    script = former.register_script("return 1")
    assert await script() == 1
    proxy.set("blackhole")
    before, started = proxy.connections, time.monotonic()
    with pytest.raises(redis_errors.TimeoutError):
        await script()  # the pooled connection, then two reconnects
    assert proxy.connections - before >= 2
    assert time.monotonic() - started >= 3 * timeout
    await asyncio.sleep(0.35)  # idle past the health check
    before, started = proxy.connections, time.monotonic()
    with pytest.raises(redis_errors.TimeoutError):
        await script()
    assert proxy.connections - before == 9
    assert time.monotonic() - started >= 9 * timeout
    await former.aclose()

    current = create_redis(through(proxy, redis_url), timeout=timeout)  # health checks: 30 s
    proxy.set("pass")
    script = current.register_script("return 1")
    assert await script() == 1
    proxy.set("blackhole")
    before, started = proxy.connections, time.monotonic()
    with pytest.raises(redis_errors.TimeoutError):
        await script()  # the pooled connection times out once: no retry of a timeout
    assert proxy.connections - before == 0
    with pytest.raises(redis_errors.TimeoutError):
        await script()  # a fresh connection: one connect, its handshake times out once
    assert proxy.connections - before == 1
    assert time.monotonic() - started < 4 * timeout + 0.3
    await current.aclose()


# --- admission ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["blackhole", "refuse"])
async def test_a_limited_key_is_refused_within_the_deadline(
    proxy: FaultProxy, proxied: redis.Redis, prefix: str, fault: str
) -> None:
    admission = Admission(BudgetStore(proxied, prefix), 4096, 60, deadline=RedisDeadline(DEADLINE))
    assert await admission.admit(LIMITED, REQUEST, [ROUTE]) is not None  # pooled connection
    proxy.set(fault)  # type: ignore[arg-type]
    for _ in range(2):  # the second is refused at once: Redis is known to be down
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            await admission.admit(LIMITED, REQUEST, [ROUTE])
        assert time.monotonic() - started < 2 * DEADLINE
        assert refused.value.reason == "BUDGET_STORE_UNAVAILABLE"
        assert refused.value.retry_after_seconds == 1.0
    assert time.monotonic() - started < 0.1


async def test_the_outage_memo_spares_a_burst_the_deadline(
    proxy: FaultProxy, proxied: redis.Redis, prefix: str
) -> None:
    """After one call found Redis silent, a burst of 200 fails at once and opens no
    connection; without the memo each would open one and wait the whole deadline."""
    proxy.set("blackhole")
    timings: dict[str, tuple[float, int]] = {}
    for name, memo in (("memo", 5.0), ("none", 0.0)):
        deadline = RedisDeadline(DEADLINE, down_seconds=memo)
        admission = Admission(BudgetStore(proxied, prefix), 4096, 60, deadline=deadline)
        with pytest.raises(Unavailable):
            await admission.admit(LIMITED, REQUEST, [ROUTE])
        before, started = proxy.connections, time.monotonic()
        results = await asyncio.gather(
            *(admission.admit(LIMITED, REQUEST, [ROUTE]) for _ in range(200)),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unavailable) for r in results)
        timings[name] = (time.monotonic() - started, proxy.connections - before)
    # No connection tried and nobody waited the deadline (the time bound is the deadline, not
    # an absolute: 200 refusals take CPU time a busy machine stretches).
    assert timings["memo"][1] == 0 and timings["memo"][0] < DEADLINE
    assert timings["none"][1] >= 100 and timings["none"][0] >= DEADLINE
    print(f"burst of 200 against a silent Redis: {timings}")


async def test_a_probe_clears_the_memo_once_redis_answers(
    proxy: FaultProxy, proxied: redis.Redis
) -> None:
    deadline = RedisDeadline(DEADLINE, down_seconds=0.2)
    proxy.set("refuse")
    with pytest.raises(redis_errors.ConnectionError):
        await deadline.run("test", proxied.ping)
    with pytest.raises(RedisKnownDown):
        await deadline.run("test", proxied.ping)
    proxy.set("pass")
    await asyncio.sleep(0.25)
    assert await deadline.run("test", proxied.ping)
    assert not deadline.known_down


# --- usage events ---------------------------------------------------------------------------


async def test_usage_falls_back_to_metering_within_the_bound(
    proxy: FaultProxy,
    proxied: redis.Redis,
    prefix: str,
    metering: tuple[FakeMetering, FaultProxy],
    channel: grpc.aio.Channel,
) -> None:
    sink = UsageSink(proxied, prefix + "usage", channel, deadline=RedisDeadline(DEADLINE))
    await sink.publish(event("gen-ok"))  # the outbox, while Redis answers
    await channel.channel_ready()
    proxy.set("blackhole")
    started = time.monotonic()
    await sink.publish(event("gen-fallback"))
    assert time.monotonic() - started < 2 * DEADLINE + 0.3
    assert [e.generation_id for e in metering[0].events] == ["gen-fallback"]


async def test_with_redis_and_metering_silent_usage_is_spooled_then_delivered_once(
    proxy: FaultProxy,
    proxied: redis.Redis,
    redis_client: redis.Redis,
    prefix: str,
    metering: tuple[FakeMetering, FaultProxy],
    channel: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    stream = prefix + "usage"
    inflight = InFlight(Liveness(proxied, prefix, stream), "router-a", 2.0, 10.0)
    records = colocated(stream, ":gen:router-a")
    spool = await Spool.open(tmp_path)
    deadline = RedisDeadline(DEADLINE)
    sink = UsageSink(
        proxied, stream, channel, inflight, deadline=deadline, fallback_seconds=0.5, spool=spool
    )
    field = generation_field("gen-spooled", 1)
    await redis_client.hset(records, field, b"- template")  # its records
    await channel.channel_ready()
    proxy.set("blackhole")
    metering[1].set("blackhole")

    started = time.monotonic()
    await sink.publish(event("gen-spooled"))  # no USAGE_NOT_RECORDED: the spool took it
    assert time.monotonic() - started < 1.5
    assert await spool.depth() == 1
    assert await redis_client.hexists(records, field)  # records kept

    replayer = Replayer(spool, {"usage": sink.deliver_spooled})
    assert await replayer.replay() == 0  # both still down: kept
    assert await spool.depth() == 1

    proxy.set("pass")
    await asyncio.sleep(1.0)  # the memo lapses
    assert await replayer.replay() == 1
    assert await replayer.replay() == 0
    assert await outbox(redis_client, stream) == ["gen-spooled"]
    assert not await redis_client.hexists(records, field)  # in the same MULTI
    assert await spool.depth() == 0
    assert metering[0].events == []
    spool.close()


async def test_a_spool_left_by_a_previous_process_is_replayed(
    redis_client: redis.Redis, prefix: str, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    stream = prefix + "usage"
    first = await Spool.open(tmp_path)  # what a router killed meanwhile left
    await first.put("usage", b"router-old gen-left:1\n" + event("gen-left").SerializeToString())
    first.close()
    records = colocated(stream, ":gen:router-old")
    await redis_client.hset(records, "gen-left:1", b"- template")

    again = await Spool.open(tmp_path)
    inflight = InFlight(Liveness(redis_client, prefix, stream), "router-new", 2.0, 10.0)
    sink = UsageSink(redis_client, stream, channel, inflight, spool=again)
    assert await Replayer(again, {"usage": sink.deliver_spooled}).replay() == 1
    assert await outbox(redis_client, stream) == ["gen-left"]
    assert not await redis_client.hexists(records, "gen-left:1")
    again.close()


# --- settles --------------------------------------------------------------------------------


@pytest.mark.parametrize("resynced", [False, True])
async def test_a_settle_that_cannot_reach_redis_is_spooled_and_counts_once(
    proxy: FaultProxy,
    proxied: redis.Redis,
    redis_client: redis.Redis,
    prefix: str,
    tmp_path: Path,
    resynced: bool,
) -> None:
    spool = await Spool.open(tmp_path)
    direct = BudgetStore(redis_client, prefix)
    now = datetime.now(UTC)
    await direct.load_key(
        LIMITED.key_id, LIMITED.account_id, Decimal(0), Decimal(0), Decimal(0), now
    )
    admission = Admission(
        BudgetStore(proxied, prefix),
        4096,
        660,
        holder="router-a",
        deadline=RedisDeadline(DEADLINE),
        spool=spool,
    )
    reservation = await admission.admit(LIMITED, REQUEST, [ROUTE])
    assert reservation is not None
    cost = Decimal("0.000123")

    proxy.set("refuse")
    started = time.monotonic()
    await admission.settle(reservation, cost)
    assert time.monotonic() - started < 2 * DEADLINE
    assert await spool.depth() == 1
    assert (
        await direct.key_spend(LIMITED.key_id, LIMITED.account_id)
    ).reserved == reservation.amount  # held

    if resynced:  # meanwhile metering's resync raised the key to a ledger holding the cost
        await direct.raise_key(LIMITED.key_id, LIMITED.account_id, cost, cost, cost, now)

    proxy.set("pass")
    await asyncio.sleep(1.0)  # the memo lapses
    replayer = Replayer(spool, {"settle": admission.deliver_spooled})
    assert await replayer.replay() == 1
    spend = await direct.key_spend(LIMITED.key_id, LIMITED.account_id)
    assert spend.reserved == 0  # released
    assert spend.total == cost  # counted once: by the settle, or by the resync alone
    account = await direct.account_balance(LIMITED.account_id)
    # The account was never raised: the settle counts its cost.
    assert (account.spent, account.reserved) == (cost, Decimal(0))
    account_key = direct.account_key(LIMITED.account_id)
    assert not await redis_client.hexists(f"{account_key}:res", reservation.id)  # not held

    # Replayed again (a crash before the entry was deleted), even after the 10-minute marker
    # is gone: nothing changes.
    await redis_client.delete(f"{account_key}:settled:{reservation.id}")
    assert await direct.settle(reservation, cost, late=True) is False
    assert await direct.key_spend(LIMITED.key_id, LIMITED.account_id) == spend
    assert await direct.account_balance(LIMITED.account_id) == account
    spool.close()


# --- cancelling a command ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["command", "pipeline", "script"])
async def test_a_command_cut_by_the_deadline_leaves_the_pool_clean(
    proxy: FaultProxy, redis_url: str, redis_client: redis.Redis, prefix: str, how: str
) -> None:
    """The cut command's reply arrives later on its socket; the next command on the pool
    (one connection) must read its own reply, not that one."""
    tcp_target(redis_url, 6379)
    client = create_redis(through(proxy, redis_url), timeout=5.0, max_connections=1)
    await redis_client.set(prefix + "a", b"stale")
    await redis_client.set(prefix + "b", b"fresh")
    script = client.register_script("return redis.call('GET', KEYS[1])")
    assert await script(keys=[prefix + "b"]) == b"fresh"  # loaded, connection pooled

    proxy.set("latency", latency=0.3)
    deadline = RedisDeadline(0.1, down_seconds=0.0)
    with pytest.raises(redis_errors.TimeoutError):
        if how == "command":
            await deadline.run("test", lambda: client.get(prefix + "a"))
        elif how == "pipeline":

            async def piped() -> object:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.get(prefix + "a")
                    return await pipe.execute()

            await deadline.run("test", piped)
        else:
            await deadline.run("test", lambda: script(keys=[prefix + "a"]))
    proxy.set("pass")
    await asyncio.sleep(0.5)  # the stale reply has arrived by now, were the socket kept
    assert await client.get(prefix + "b") == b"fresh"
    assert await script(keys=[prefix + "b"]) == b"fresh"
    await client.aclose()
