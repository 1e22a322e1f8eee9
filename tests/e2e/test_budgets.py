"""Spend limits and prepaid credit through the real router: concurrent requests can never
spend past a key's limit or an account's credit, refused requests send nothing upstream, and
every reservation returns to zero."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth, ledger_entry, limited_key

pytestmark = [pytest.mark.e2e]

# Each answer takes a second (20 tokens 50 ms apart): every request of a race is admitted or
# refused while the admitted ones still hold their whole reservations. With the default 10 ms
# a race's first answers could end, and settle to their small cost, before its last requests
# were admitted, which then fit (seen once: 12 of 50 admitted where the race expects 10).
STACK_ENV = {"SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0.05"}

# "hi" is reserved as 6 prompt tokens (2 bytes and 16 of framing, a token per 3 bytes); with
# max_tokens 1000 at the demo's $1 / $2 per million tokens, each request reserves
# 6 * $1e-6 + 1000 * $2e-6 = $0.002006.
RESERVED = Decimal("0.002006")
REQUEST = router_pb2.StreamCompletionRequest(
    model="switchboard/demo",
    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
    max_tokens=1000,
)


async def attempt(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: metering_pb2.CreateApiKeyResponse
) -> router_pb2.CompletionEnd | grpc.aio.AioRpcError:
    messages = []
    try:
        async for message in router.StreamCompletion(REQUEST, metadata=auth(key)):
            messages.append(message)
    except grpc.aio.AioRpcError as error:
        assert not messages  # refused before anything started: nothing went upstream
        return error
    return messages[-1].end


async def reserved_settles(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub, key_id: str
) -> metering_pb2.GetBalanceResponse:
    for _ in range(100):
        balance = await metering.GetBalance(metering_pb2.GetBalanceRequest(key_id=key_id))
        if Decimal(balance.key.reserved_usd or "0") == 0:
            return balance
        await asyncio.sleep(0.05)
    raise AssertionError("reservations never returned to zero")


async def admissions(stack: Stack) -> dict[str, float]:
    """The router's budget admission counters, by result, from its /metrics."""
    url = f"http://127.0.0.1:{stack.ports.router_metrics}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "switchboard_router_budget_admissions"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


async def test_fifty_concurrent_requests_on_a_key_whose_limit_admits_ten(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    stack: Stack,
) -> None:
    counted_before = await admissions(stack)
    limit = 10 * RESERVED + RESERVED / 2
    key = await limited_key(metering, "race", metering_pb2.SpendLimits(total_usd=str(limit)))
    results = await asyncio.gather(*(attempt(router, key) for _ in range(50)))
    ends = [r for r in results if isinstance(r, router_pb2.CompletionEnd)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ends) == 10 and len(refused) == 40
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "limit" in (refused[0].details() or "")
    counted = await admissions(stack)
    assert counted["admitted"] - counted_before["admitted"] == 10
    assert counted["total"] - counted_before["total"] == 40

    spent = sum(Decimal(e.cost_usd) for e in ends)
    balance = await reserved_settles(metering, key.api_key.id)
    for _ in range(100):  # the ledger catches up through the outbox
        balance = await metering.GetBalance(metering_pb2.GetBalanceRequest(key_id=key.api_key.id))
        if Decimal(balance.key.spent_total_usd) == spent:
            break
        await asyncio.sleep(0.05)
    assert Decimal(balance.key.spent_total_usd) == spent <= limit
    # With the reservations settled to the (small) actual cost, more requests fit again.
    again = await attempt(router, key)
    assert isinstance(again, router_pb2.CompletionEnd)


async def test_prepaid_credit_bounds_every_key_of_the_account(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    await metering.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="prepaid", amount_usd=str(RESERVED * 3))
    )
    keys = [
        await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="prepaid"))
        for _ in range(2)
    ]
    results = await asyncio.gather(*(attempt(router, keys[i % 2]) for i in range(12)))
    ends = [r for r in results if isinstance(r, router_pb2.CompletionEnd)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ends) == 3 and len(refused) == 9
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    assert "credit" in (refused[0].details() or "")
    for key in keys:
        await reserved_settles(metering, key.api_key.id)
    balance = await metering.GetBalance(metering_pb2.GetBalanceRequest(account_id="prepaid"))
    assert Decimal(balance.account.reserved_usd) == 0


async def test_a_cancelled_stream_settles_its_reservation_to_what_it_spent(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    key = await limited_key(metering, "capped", metering_pb2.SpendLimits(daily_usd="1"))
    call = router.StreamCompletion(REQUEST, metadata=auth(key))
    start = await call.read()
    assert isinstance(start, router_pb2.StreamCompletionResponse)
    await call.read()
    call.cancel()
    row = await ledger_entry(metering, start.start.generation_id)
    balance = await reserved_settles(metering, key.api_key.id)
    assert Decimal(balance.key.spent_today_usd) == Decimal(row.cost_usd) > 0
