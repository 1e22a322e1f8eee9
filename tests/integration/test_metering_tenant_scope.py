"""Metering's side of tenants' own data: keys' expiry and allow-lists stored and returned,
expired keys refused by name, and a key the router forwards scoped to its own account by
metering itself (operators keep seeing every account)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.metering.v1 import metering_pb2
from switchboard_core.rpc_owners import FORWARDED_AUTHORIZATION
from tests.integration.test_metering_app import (
    Metering,
    field_violations,
    running_metering,
    test_settings,
    usage_event,
)


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    async with running_metering(database_url, redis_url, test_settings(redis_prefix)) as running:
        yield running


def account() -> str:
    return f"acct-{uuid.uuid4().hex[:12]}"


def as_tenant(key: metering_pb2.CreateApiKeyResponse) -> tuple[tuple[str, str]]:
    return ((FORWARDED_AUTHORIZATION, f"Bearer {key.secret}"),)


def reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    return str(info.reason)


async def test_a_keys_expiry_and_allow_lists_are_kept_and_returned(metering: Metering) -> None:
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    request = metering_pb2.CreateApiKeyRequest(
        account_id=account(), allowed_models=["openai/gpt-4o-mini"], allowed_providers=["openai"]
    )
    request.expire_time.FromDatetime(expiry)
    created = await metering.stub.CreateApiKey(request)
    got = await metering.stub.GetApiKey(metering_pb2.GetApiKeyRequest(key_id=created.api_key.id))
    verified = await metering.router.VerifyApiKey(
        metering_pb2.VerifyApiKeyRequest(secret=created.secret)
    )
    for key in (created.api_key, got.api_key, verified.api_key):
        assert key.expire_time.ToDatetime(tzinfo=UTC) == expiry
        assert list(key.allowed_models) == ["openai/gpt-4o-mini"]
        assert list(key.allowed_providers) == ["openai"]
    plain = await metering.stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account()))
    assert not plain.api_key.HasField("expire_time") and not plain.api_key.allowed_models


async def test_bad_rules_are_refused_naming_each_field(metering: Metering) -> None:
    request = metering_pb2.CreateApiKeyRequest(
        account_id=account(), allowed_models=["nope"], allowed_providers=["ok", "Not OK"]
    )
    request.expire_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.CreateApiKey(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == [
        "expire_time",
        "allowed_models[0]",
        "allowed_providers[1]",
    ]


async def test_an_expired_key_is_refused_as_expired(metering: Metering, database_url: str) -> None:
    created = await metering.stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id=account())
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
            created.api_key.id,
        )
    finally:
        await conn.close()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.router.VerifyApiKey(metering_pb2.VerifyApiKeyRequest(secret=created.secret))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(refused.value) == "API_KEY_EXPIRED"
    with pytest.raises(grpc.aio.AioRpcError) as forwarded:  # and as a forwarded key
        await metering.router.GetApiKey(
            metering_pb2.GetApiKeyRequest(key_id=created.api_key.id), metadata=as_tenant(created)
        )
    assert reason(forwarded.value) == "API_KEY_EXPIRED"


async def test_a_forwarded_key_reads_its_account_and_operators_read_all(
    metering: Metering,
) -> None:
    mine, theirs = account(), account()
    a = await metering.stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=mine))
    b = await metering.stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=theirs))
    event = usage_event(b.api_key.id)
    event.account_id = theirs
    await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[event]))
    generation = metering_pb2.GetGenerationRequest(generation_id=event.generation_id)

    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await metering.router.GetGeneration(generation, metadata=as_tenant(a))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await metering.router.GetGeneration(
            metering_pb2.GetGenerationRequest(generation_id=event.generation_id + "x"),
            metadata=as_tenant(a),
        )
    assert foreign.value.code() == unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert (foreign.value.details() or "").replace(event.generation_id, "ID") == (
        unknown.value.details() or ""
    ).replace(event.generation_id + "x", "ID")
    assert reason(foreign.value) == reason(unknown.value) == "NOT_FOUND"

    # B itself, and any operator, read it.
    own = await metering.router.GetGeneration(generation, metadata=as_tenant(b))
    assert own.generation.key_id == b.api_key.id
    assert (await metering.stub.GetGeneration(generation)).generation.key_id == b.api_key.id
    usage = await metering.stub.QueryUsage(metering_pb2.QueryUsageRequest(account_id=theirs))
    assert usage.total_requests == 1
    with pytest.raises(grpc.aio.AioRpcError) as scoped:
        await metering.router.QueryUsage(
            metering_pb2.QueryUsageRequest(account_id=theirs), metadata=as_tenant(a)
        )
    assert scoped.value.code() == grpc.StatusCode.NOT_FOUND
    balance = await metering.router.GetBalance(
        metering_pb2.GetBalanceRequest(account_id=mine), metadata=as_tenant(a)
    )
    assert balance.account.account_id == mine


async def test_record_usage_refuses_a_swept_event(metering: Metering) -> None:
    """Only metering's sweep records a swept (provisional) row: a caller of RecordUsage may
    not, or it could have its own later event replace what it recorded."""
    key = await metering.stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account()))
    event = usage_event(key.api_key.id)
    event.swept = True
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[event]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["events[0].swept"]
    event.swept = False
    recorded = await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[event]))
    assert recorded.recorded_count == 1
