"""Rate limits in metering against real Postgres and Redis: a key's (SetKeyLimits, with its
presence rules) and an account's (SetAccountLimits) are stored, bounded, carried by every
ApiKey metering returns, announced to the routers and audited; only ``limits:write`` sets them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.key_changes import KeyChangeListener, channel_name
from switchboard_core.rate_limits import (
    MAX_CONCURRENT,
    MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_MINUTE,
)
from switchboard_core.redis_client import create_redis
from tests.integration.test_metering_app import (
    Metering,
    field_violations,
    running_metering,
    test_settings,
)
from tests.secure import admin_key, operator_channel

METERING = "/switchboard.metering.v1.MeteringService/"
RATES = metering_pb2.RateLimits(requests_per_minute=600, tokens_per_minute=90_000, max_concurrent=4)
SHARED = metering_pb2.RateLimits(requests_per_minute=6000, max_concurrent=40)
SPEND = metering_pb2.SpendLimits(daily_usd="5")


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    settings = test_settings(redis_prefix + "rates:")
    async with running_metering(database_url, redis_url, settings) as running:
        yield running


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def new_key(
    metering: Metering, account: str | None = None
) -> metering_pb2.CreateApiKeyResponse:
    account = account or f"rates-{uuid.uuid4().hex[:8]}"
    request = metering_pb2.CreateApiKeyRequest(account_id=account, name="rl")
    return await metering.stub.CreateApiKey(request)


async def refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value


async def every_view(metering: Metering, key: metering_pb2.CreateApiKeyResponse) -> list[object]:
    """The key as GetApiKey, ListApiKeys and VerifyApiKey return it."""
    got = await metering.stub.GetApiKey(metering_pb2.GetApiKeyRequest(key_id=key.api_key.id))
    listed = await metering.stub.ListApiKeys(
        metering_pb2.ListApiKeysRequest(account_id=key.api_key.account_id)
    )
    verified = await metering.router.VerifyApiKey(
        metering_pb2.VerifyApiKeyRequest(secret=key.secret)
    )
    (same,) = [k for k in listed.api_keys if k.id == key.api_key.id]
    return [got.api_key, same, verified.api_key]


async def test_a_keys_and_its_accounts_rate_limits_reach_every_api_key_returned(
    metering: Metering,
) -> None:
    key = await new_key(metering)
    account = key.api_key.account_id
    assert not key.api_key.HasField("rate_limits")
    assert not key.api_key.HasField("account_rate_limits")

    set_key = await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=SPEND, rate_limits=RATES)
    )
    assert set_key.api_key.rate_limits == RATES and set_key.api_key.limits == SPEND
    shared = await metering.stub.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(account_id=account, rate_limits=SHARED)
    )
    assert (shared.account_id, shared.rate_limits) == (account, SHARED)

    for view in await every_view(metering, key):
        assert isinstance(view, metering_pb2.ApiKey)
        assert (view.rate_limits, view.account_rate_limits) == (RATES, SHARED)
    # A new key of the account carries the account's limits, none of its own.
    sibling = await new_key(metering, account)
    assert sibling.api_key.account_rate_limits == SHARED
    assert not sibling.api_key.HasField("rate_limits")
    revoked = await metering.stub.RevokeApiKey(
        metering_pb2.RevokeApiKeyRequest(key_id=key.api_key.id)
    )
    assert (revoked.api_key.rate_limits, revoked.api_key.account_rate_limits) == (RATES, SHARED)


async def test_unset_rate_limits_are_kept_and_an_empty_message_removes_them(
    metering: Metering,
) -> None:
    key = await new_key(metering)
    request = metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=RATES)
    await metering.stub.SetKeyLimits(request)

    kept = await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=SPEND)
    )
    assert kept.api_key.rate_limits == RATES and kept.api_key.limits == SPEND

    # Set, one limit changed: the other two are replaced too (0: no limit).
    one = metering_pb2.RateLimits(max_concurrent=2)
    replaced = await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=SPEND, rate_limits=one)
    )
    assert replaced.api_key.rate_limits == one

    cleared = metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=SPEND)
    cleared.rate_limits.SetInParent()
    removed = await metering.stub.SetKeyLimits(cleared)
    assert not removed.api_key.HasField("rate_limits")
    assert removed.api_key.limits == SPEND
    (view, *_) = await every_view(metering, key)
    assert isinstance(view, metering_pb2.ApiKey) and not view.HasField("rate_limits")

    await metering.stub.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(account_id=key.api_key.account_id, rate_limits=SHARED)
    )
    emptied = await metering.stub.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(account_id=key.api_key.account_id)
    )
    assert emptied.rate_limits == metering_pb2.RateLimits()
    (view, *_) = await every_view(metering, key)
    assert isinstance(view, metering_pb2.ApiKey) and not view.HasField("account_rate_limits")


async def test_the_highest_limits_round_trip(metering: Metering, db: asyncpg.Connection) -> None:
    key = await new_key(metering)
    top = metering_pb2.RateLimits(
        requests_per_minute=MAX_REQUESTS_PER_MINUTE,
        tokens_per_minute=MAX_TOKENS_PER_MINUTE,
        max_concurrent=MAX_CONCURRENT,
    )
    reply = await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=top)
    )
    assert reply.api_key.rate_limits == top
    shared = await metering.stub.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(account_id=key.api_key.account_id, rate_limits=top)
    )
    assert shared.rate_limits == top
    # And the table itself holds the bounds, whatever writes it.
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "UPDATE accounts SET rate_tokens_per_minute = $2 WHERE id = $1",
            key.api_key.account_id,
            MAX_TOKENS_PER_MINUTE + 1,
        )


async def test_limits_above_their_bounds_are_invalid_naming_each_field_and_change_nothing(
    metering: Metering,
) -> None:
    key = await new_key(metering)
    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=SPEND, rate_limits=RATES)
    )
    too_high = metering_pb2.RateLimits(
        requests_per_minute=MAX_REQUESTS_PER_MINUTE + 1,
        tokens_per_minute=2**64 - 1,  # past what Postgres's bigint holds: refused before it
        max_concurrent=MAX_CONCURRENT + 1,
    )
    fields = [
        "rate_limits.requests_per_minute",
        "rate_limits.tokens_per_minute",
        "rate_limits.max_concurrent",
    ]
    bad = await refusal(
        metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(
                key_id=key.api_key.id,
                limits=metering_pb2.SpendLimits(total_usd="-1"),
                rate_limits=too_high,
            )
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(bad) == ["limits.total_usd", *fields]  # the spend limit's too
    only_rates = await refusal(
        metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=too_high)
        )
    )
    assert field_violations(only_rates) == fields
    (view, *_) = await every_view(metering, key)  # nothing was written, not even the spend
    assert isinstance(view, metering_pb2.ApiKey)
    assert (view.limits, view.rate_limits) == (SPEND, RATES)

    account = await refusal(
        metering.stub.SetAccountLimits(
            metering_pb2.SetAccountLimitsRequest(account_id="bad id!", rate_limits=too_high)
        )
    )
    assert account.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(account) == ["account_id", *fields]
    one = metering_pb2.RateLimits(max_concurrent=MAX_CONCURRENT + 1)
    concurrent = await refusal(
        metering.stub.SetAccountLimits(
            metering_pb2.SetAccountLimitsRequest(account_id=key.api_key.account_id, rate_limits=one)
        )
    )
    assert field_violations(concurrent) == ["rate_limits.max_concurrent"]
    for account_id in ("", "a" * 65):
        malformed = await refusal(
            metering.stub.SetAccountLimits(
                metering_pb2.SetAccountLimitsRequest(account_id=account_id)
            )
        )
        assert field_violations(malformed) == ["account_id"]


async def test_an_unknown_account_or_key_is_not_found_and_a_revoked_key_cannot_change(
    metering: Metering, db: asyncpg.Connection
) -> None:
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    missing = await refusal(
        metering.stub.SetAccountLimits(
            metering_pb2.SetAccountLimitsRequest(account_id=unknown, rate_limits=SHARED)
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", unknown) == 0

    no_key = await refusal(
        metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(key_id="key_nope", rate_limits=RATES)
        )
    )
    assert no_key.code() == grpc.StatusCode.NOT_FOUND
    key = await new_key(metering)
    await metering.stub.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=key.api_key.id))
    revoked = await refusal(
        metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=RATES)
        )
    )
    assert revoked.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_both_changes_are_announced_to_the_routers(
    metering: Metering, redis_url: str
) -> None:
    key = await new_key(metering)
    expected = [f"key:{key.api_key.id}", f"account:{key.api_key.account_id}"]
    heard: list[str] = []
    both = asyncio.Event()

    def on_change(subject: str) -> None:
        heard.append(subject)
        if len(heard) == len(expected):
            both.set()

    client = create_redis(redis_url, timeout=2.0)
    listener = KeyChangeListener(
        client, channel_name(metering.config.budget_prefix), on_change, lambda: None
    )
    listener.start()
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        await metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=RATES)
        )
        await metering.stub.SetAccountLimits(
            metering_pb2.SetAccountLimitsRequest(
                account_id=key.api_key.account_id, rate_limits=SHARED
            )
        )
        await asyncio.wait_for(both.wait(), 5)
        assert heard == expected
    finally:
        await listener.stop()
        await client.aclose()


async def test_both_changes_are_audited_with_their_limits(
    metering: Metering, db: asyncpg.Connection
) -> None:
    key = await new_key(metering)
    account = key.api_key.account_id
    key_call = (("x-request-id", f"rl-{uuid.uuid4().hex}"),)
    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, rate_limits=RATES),
        metadata=key_call,
    )
    account_call = (("x-request-id", f"rl-{uuid.uuid4().hex}"),)
    await metering.stub.SetAccountLimits(
        metering_pb2.SetAccountLimitsRequest(account_id=account, rate_limits=SHARED),
        metadata=account_call,
    )
    rows = {
        name: await db.fetchrow(
            "SELECT rpc, target, change -> 'request' AS request FROM audit_events"
            " WHERE request_id = $1",
            call[0][1],
        )
        for name, call in (("key", key_call), ("account", account_call))
    }
    key_row, account_row = rows["key"], rows["account"]
    assert key_row is not None and account_row is not None
    assert (key_row["rpc"], key_row["target"]) == (
        METERING + "SetKeyLimits",
        f"api_key:{key.api_key.id}",
    )
    assert '"requests_per_minute": 600' in key_row["request"]
    assert (account_row["rpc"], account_row["target"]) == (
        METERING + "SetAccountLimits",
        f"account:{account}",
    )
    assert '"max_concurrent": 40' in account_row["request"]
    # A refused call writes no event.
    failed = (("x-request-id", f"rl-{uuid.uuid4().hex}"),)
    await refusal(
        metering.stub.SetAccountLimits(
            metering_pb2.SetAccountLimitsRequest(account_id="nobody-at-all"), metadata=failed
        )
    )
    count = await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE request_id = $1", failed[0][1]
    )
    assert count == 0


async def test_only_limits_write_may_set_an_accounts_limits(
    metering: Metering, database_url: str
) -> None:
    key = await new_key(metering)
    request = metering_pb2.SetAccountLimitsRequest(
        account_id=key.api_key.account_id, rate_limits=SHARED
    )
    outcomes: dict[str, grpc.StatusCode] = {}
    callers = {
        "limits:write": await admin_key(database_url, ("limits:write",)),
        "keys:write and credits:write": await admin_key(
            database_url, ("keys:write", "credits:write")
        ),
        "api key": key.secret,
    }
    for who, secret in callers.items():
        async with operator_channel(metering.address, secret) as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            try:
                await stub.SetAccountLimits(request, timeout=10)
                outcomes[who] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                outcomes[who] = error.code()
    # The router service (mutual TLS identity) is not an owner either.
    router_refused = await refusal(metering.router.SetAccountLimits(request))
    assert outcomes == {
        "limits:write": grpc.StatusCode.OK,
        "keys:write and credits:write": grpc.StatusCode.PERMISSION_DENIED,
        "api key": grpc.StatusCode.PERMISSION_DENIED,  # not accepted on metering's port
    }
    assert router_refused.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
