"""Rate limits set through the admin API are what the key's owner reads on the router's public
port (``GetKey``): the key's own and its account's, and nothing of another account's."""

from __future__ import annotations

import uuid

import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2_grpc
from tests.e2e.support import auth

pytestmark = [pytest.mark.e2e]

OWN = metering_pb2.RateLimits(requests_per_minute=120, tokens_per_minute=50_000, max_concurrent=3)
SHARED = metering_pb2.RateLimits(requests_per_minute=1200, max_concurrent=30)


async def test_get_key_shows_the_calling_key_its_rate_limits_and_its_accounts(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    mine, other = (f"rates-{uuid.uuid4().hex[:8]}" for _ in range(2))
    key = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=mine))
    stranger = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=other))
    before = await router.GetKey(account_pb2.GetKeyRequest(), metadata=auth(key))
    assert not before.api_key.HasField("rate_limits")
    assert not before.api_key.HasField("account_rate_limits")

    await metering.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=OWN)
    )
    await metering.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(account_id=mine, rate_limits=SHARED)
    )
    await metering.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(
            account_id=other, rate_limits=metering_pb2.RateLimits(requests_per_minute=1)
        )
    )

    shown = await router.GetKey(account_pb2.GetKeyRequest(), metadata=auth(key))
    assert shown.api_key.id == key.api_key.id
    assert shown.api_key.rate_limits == OWN
    assert shown.api_key.account_rate_limits == SHARED
    theirs = await router.GetKey(account_pb2.GetKeyRequest(), metadata=auth(stranger))
    assert not theirs.api_key.HasField("rate_limits")
    assert theirs.api_key.account_rate_limits == metering_pb2.RateLimits(requests_per_minute=1)
