"""Rate limits over the router's real gRPC surface (its servicer behind the shared interceptor,
the real Redis): a refusal is RESOURCE_EXHAUSTED with one ErrorInfo naming the limit and a
RetryInfo; a request's concurrency lease is given back however it ends (done, refused by the
spend budget after the rate check, cancelled by the client), and its tokens are corrected to
the usage of the relay's Completed event."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import grpc
import pytest
import redis.asyncio as redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.auth import Authenticator, TenantPrincipal
from switchboard_core.budget import BudgetExceeded
from switchboard_core.interceptors import ServerInterceptor
from switchboard_core.rate_limits import RateLimiter, RateLimits, increment_us
from switchboard_core.redis_client import RedisDeadline
from switchboard_router.account import AccountReads
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.catalog_cache import CatalogCache, Route, Snapshot
from switchboard_router.completions import Completions
from switchboard_router.leases import LeaseKeeper
from switchboard_router.relay import Relay, RelayEvent, Started
from switchboard_router.service import RouterServicer
from switchboard_router.traffic import TrafficControl
from tests.integration.test_rate_limits import Clock
from tests.integration.test_router_lifecycle import LIVE, FakeCatalog, FakeRelay, error_info, hello
from tests.unit.test_router_lifecycle import catalog

KEY = "key_rpc"
TPM = 600  # 10 tokens a second


class Callers:
    """The interceptor's authenticator: every call runs as ``self.caller``."""

    def __init__(self) -> None:
        self.caller = Caller(KEY, "acct")

    async def authorize(self, *_: Any) -> TenantPrincipal:
        return TenantPrincipal(self.caller.key_id, self.caller.account_id, self.caller)


class Budget:
    """Admission that refuses when told to (a spend limit reached after the rate check)."""

    refuse = False

    async def admit(self, *_: Any, **__: Any) -> None:
        if self.refuse:
            raise BudgetExceeded("daily", Decimal(0), Decimal("0.01"))


class HangingRelay:
    """Starts a generation and never ends it (the client cancels)."""

    async def run(
        self, request: Any, routes: list[Route], *_: Any, **__: Any
    ) -> AsyncIterator[RelayEvent]:
        yield Started("gen-1", routes[0], 0.0)
        await asyncio.Event().wait()


class Server:
    """The servicer's parts a test changes, and a stub to call it."""

    stub: router_pb2_grpc.RouterServiceAsyncStub

    def __init__(self, traffic: TrafficControl) -> None:
        self.traffic = traffic
        self.callers = Callers()
        self.budget = Budget()
        self.relay: Any = FakeRelay()

    def run(self, *args: Any, **kwargs: Any) -> AsyncIterator[RelayEvent]:
        """The relay of the moment (a test may swap it)."""
        return cast(AsyncIterator[RelayEvent], self.relay.run(*args, **kwargs))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix(redis_prefix: str, redis_client: redis.Redis) -> str:
    return f"{redis_prefix}rlrpc{uuid.uuid4().hex[:6]}:"


@pytest.fixture
async def server(redis_client: redis.Redis, prefix: str, clock: Clock) -> AsyncIterator[Server]:
    limiter = RateLimiter(redis_client, prefix, clock=clock)
    deadline = RedisDeadline(0.5)
    traffic = TrafficControl(limiter, LeaseKeeper(limiter, deadline, 30.0), deadline)
    holder = Server(traffic)
    grpc_server = grpc.aio.server(
        interceptors=[ServerInterceptor(cast(Authenticator, holder.callers))]
    )
    completions = Completions(
        cast(CatalogCache, FakeCatalog(Snapshot.from_proto(catalog(LIVE)))),
        cast(Relay, holder),
        cast(Admission, holder.budget),
        60.0,
        traffic=traffic,
    )
    servicer = RouterServicer(completions, cast(AccountReads, None))
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        holder.stub = router_pb2_grpc.RouterServiceStub(channel)
        yield holder
    await grpc_server.stop(None)


def limited(server: Server, **limits: int) -> None:
    server.callers.caller = Caller(KEY, "acct", rate_limits=RateLimits(**limits))


def unary() -> router_pb2.CreateCompletionRequest:
    return router_pb2.CreateCompletionRequest(model=LIVE.id, messages=hello())


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


async def leases_held(redis_client: redis.Redis, prefix: str) -> int:
    return int(await redis_client.zcard(f"{prefix}rl:{{acct}}:key:{KEY}:conc"))


async def test_a_refusal_names_the_limit_and_when_to_retry(server: Server) -> None:
    limited(server, requests_per_minute=1)
    assert (await server.stub.CreateCompletion(unary())).text == "hello"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.stub.CreateCompletion(unary())
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        error.details() == "rate limit reached: the key's requests per minute (1); retry in 60.00 s"
    )
    info = error_info(error)
    assert (info.reason, info.domain) == ("RATE_LIMITED", "switchboard.dev")
    assert dict(info.metadata) == {"limit": "key.requests_per_minute", "limit_value": "1"}
    assert retry_delay(error) == 60.0


async def test_a_prompt_too_large_for_the_limit_gets_no_retry_info(server: Server) -> None:
    limited(server, tokens_per_minute=5)  # the prompt is estimated at 6 tokens
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.stub.CreateCompletion(unary())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused.value).metadata["requested_tokens"] == "6"
    assert retry_delay(refused.value) is None


async def test_a_stream_gives_its_lease_back_and_its_tokens_are_corrected(
    server: Server, redis_client: redis.Redis, prefix: str, clock: Clock
) -> None:
    limited(server, max_concurrent=1, tokens_per_minute=TPM)
    for _ in range(3):  # one at a time: each gives its slot back when it ends
        request = router_pb2.StreamCompletionRequest(model=LIVE.id, messages=hello())
        messages = [message async for message in server.stub.StreamCompletion(request)]
        assert messages[-1].HasField("end")
        await server.traffic.drain()
        assert await leases_held(redis_client, prefix) == 0
    # Charged 6 tokens each (the estimate), corrected to the Completed event's 3 + 1.
    tat = int(await redis_client.get(f"{prefix}rl:{{acct}}:key:{KEY}:tpm") or 0)
    assert tat == clock() + 3 * increment_us(4, TPM)


async def test_a_budget_refusal_after_the_rate_check_gives_the_lease_and_tokens_back(
    server: Server, redis_client: redis.Redis, prefix: str
) -> None:
    limited(server, max_concurrent=1, tokens_per_minute=TPM)
    server.budget.refuse = True
    for _ in range(3):  # the one slot is free again each time
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.stub.CreateCompletion(unary())
        assert error_info(refused.value).reason == "KEY_LIMIT_EXCEEDED"
        await server.traffic.drain()
        assert await leases_held(redis_client, prefix) == 0
    # Nothing went upstream: no tokens are counted.
    assert not await redis_client.exists(f"{prefix}rl:{{acct}}:key:{KEY}:tpm")


async def test_a_stream_the_client_cancels_gives_its_lease_back(
    server: Server, redis_client: redis.Redis, prefix: str
) -> None:
    limited(server, max_concurrent=1)
    server.relay = HangingRelay()
    request = router_pb2.StreamCompletionRequest(model=LIVE.id, messages=hello())
    call = server.stub.StreamCompletion(request)
    first = await call.read()
    assert isinstance(first, router_pb2.StreamCompletionResponse) and first.HasField("start")
    assert await leases_held(redis_client, prefix) == 1
    call.cancel()
    for _ in range(100):
        await server.traffic.drain()
        if not await leases_held(redis_client, prefix):
            break
        await asyncio.sleep(0.01)
    assert await leases_held(redis_client, prefix) == 0
