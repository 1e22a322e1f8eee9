"""The router cut off from Redis by a silent partition (a blackholing fault proxy on its
link only; metering keeps its own): limited keys are refused at once, streams end on time,
and once the link is back the ledger holds exactly what clients were told and the limited
key's reservations are released, not held until they expire."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import grpc
import pytest
import redis.asyncio as redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.budget import BudgetStore
from tests.e2e.support import Told, auth, ledger_rows, limited_key, settled
from tests.faults.links import redis_proxy, through
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e]

TOKEN_DELAY = 0.15  # the demo's 20 tokens take 3 s: streams outlive the fault's start
STACK_ENV = {
    "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(TOKEN_DELAY),
    "SWITCHBOARD_SPOOL_DIR": tempfile.mkdtemp(prefix="switchboard-e2e-spool-"),
}
STREAMS = 6


@pytest.fixture(scope="module")
def redis_link(redis_url: str) -> Iterator[FaultProxy]:
    proxy = redis_proxy(redis_url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def stack_service_env(redis_link: FaultProxy, redis_url: str) -> dict[str, dict[str, str]]:
    return {"router": {"REDIS_URL": through(redis_link, redis_url)}}


def ask(max_tokens: int = 20) -> router_pb2.StreamCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="tell me")
    return router_pb2.StreamCompletionRequest(
        model="switchboard/demo", messages=[message], max_tokens=max_tokens
    )


@dataclass
class Stream:
    """What one client saw: its generation, and when its last token and its end came."""

    generation_id: str = ""
    last_token: float = 0.0
    ended: float = 0.0
    end: router_pb2.CompletionEnd | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)


async def stream(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    seen: Stream,
) -> None:
    async for message in router.StreamCompletion(ask(), metadata=auth(key)):
        if message.HasField("start"):
            seen.generation_id = message.start.generation_id
        elif message.HasField("delta"):
            seen.last_token = time.monotonic()
            seen.started.set()
        elif message.HasField("end"):
            seen.ended, seen.end = time.monotonic(), message.end


def told(streams: list[Stream]) -> Told:
    return {
        s.generation_id: (
            s.end.usage.prompt_tokens,
            s.end.usage.completion_tokens,
            Decimal(s.end.cost_usd),
        )
        for s in streams
        if s.end is not None
    }


def retry_delay(error: grpc.aio.AioRpcError) -> tuple[str, float]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reason, delay = "", -1.0
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


async def reserved(client: redis.Redis, prefix: str, key: metering_pb2.ApiKey) -> Decimal:
    """What ``key`` holds reserved (switchboard_core.budget's layout)."""
    spend = await BudgetStore(client, prefix).key_spend(key.id, key.account_id)
    return spend.reserved


async def test_a_silent_redis_partition_of_the_router(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    redis_link: FaultProxy,
    redis_client: redis.Redis,
    budget_prefix: str,
    database_url: str,
) -> None:
    free = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="redis-fault"))
    limited = await limited_key(
        metering, "redis-fault-limited", metering_pb2.SpendLimits(daily_usd="5")
    )
    for key in (free, limited):  # both verified, the limited one's counters loaded
        warm = Stream()
        await stream(router, key, warm)
        assert warm.end is not None

    streams = {key.api_key.id: [Stream() for _ in range(STREAMS)] for key in (free, limited)}
    running = [
        asyncio.create_task(stream(router, key, seen))
        for key in (free, limited)
        for seen in streams[key.api_key.id]
    ]
    await asyncio.gather(*(s.started.wait() for ss in streams.values() for s in ss))
    assert await reserved(redis_client, budget_prefix, limited.api_key) > 0
    redis_link.set("blackhole")
    try:
        # A limited key cannot be checked: refused at once, with a retry delay.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream(router, limited, Stream())
        assert time.monotonic() - started < 2.0
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_delay(refused.value) == ("BUDGET_STORE_UNAVAILABLE", 1.0)

        # Streams started before the partition, and one started during it, end on time.
        during = Stream()
        await asyncio.gather(*running, stream(router, free, during))
        streams[free.api_key.id].append(during)
        for seen in (s for ss in streams.values() for s in ss):
            assert seen.end is not None
            assert seen.ended - seen.last_token < 1.5, seen.ended - seen.last_token
        late = max(s.ended - s.last_token for ss in streams.values() for s in ss)
        print(f"slowest end after its last token during the partition: {late:.3f} s")
        # The settles could not reach Redis: still reserved while it is silent.
        assert await reserved(redis_client, budget_prefix, limited.api_key) > 0
    finally:
        redis_link.set("pass")

    # The spooled settles are applied within seconds, not after the reservations' 660 s.
    cleared = time.monotonic()
    while await reserved(redis_client, budget_prefix, limited.api_key) > 0:
        assert time.monotonic() - cleared < 10, "reservations still held"
        await asyncio.sleep(0.2)
    print(f"reservations released {time.monotonic() - cleared:.2f} s after the link came back")
    after = Stream()
    for _ in range(20):  # the memo of the outage lapses within a second
        try:
            await stream(router, limited, after)
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.2)
    assert after.end is not None

    for key in (free, limited):
        expected = told(streams[key.api_key.id])
        assert len(expected) == len(streams[key.api_key.id])
        rows = await settled(database_url, key.api_key.id, expected, timeout=20)
        mine = {g: rows[g] for g in expected}
        assert mine == expected
    assert len(await ledger_rows(database_url, free.api_key.id)) == STREAMS + 2
