"""Key changes reach the routers at once, not after their key cache time (10 minutes here):
metering announces a revocation, new limits or new credit, and the router drops its cache."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from tests.e2e.support import auth

pytestmark = [pytest.mark.e2e]

STACK_ENV = {"SWITCHBOARD_KEY_CACHE_SECONDS": "600"}
REQUEST = router_pb2.CreateCompletionRequest(
    model="switchboard/demo",
    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
    max_tokens=100,
)


async def ask(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: metering_pb2.CreateApiKeyResponse
) -> grpc.StatusCode:
    try:
        await router.CreateCompletion(REQUEST, metadata=auth(key))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def soon(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    code: grpc.StatusCode,
) -> grpc.StatusCode:
    """The code the router answers once the announcement arrived (a message, not a timer)."""
    got = grpc.StatusCode.OK
    for _ in range(40):
        got = await ask(router, key)
        if got == code:
            break
        await asyncio.sleep(0.05)
    return got


async def test_revoking_a_key_applies_on_the_next_requests(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    key = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="changes"))
    assert await ask(router, key) == grpc.StatusCode.OK  # now cached for 10 minutes
    await metering.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=key.api_key.id))
    assert await soon(router, key, grpc.StatusCode.UNAUTHENTICATED) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_new_limits_and_new_credit_apply_on_the_next_requests(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    key = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="changes-2"))
    assert await ask(router, key) == grpc.StatusCode.OK
    await metering.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.api_key.id, limits=metering_pb2.SpendLimits(daily_usd="0")
        )
    )
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await soon(router, key, exhausted) == exhausted

    other = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="changes-3"))
    assert await ask(router, other) == grpc.StatusCode.OK
    # A first grant makes the account prepaid: its keys then spend only credit, and this
    # much credit covers no request's worst case.
    await metering.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="changes-3", amount_usd="0.000001")
    )
    assert await soon(router, other, exhausted) == exhausted
