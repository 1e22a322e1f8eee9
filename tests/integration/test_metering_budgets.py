"""Spend limits and prepaid credit in metering: set, granted, reported, and loaded into the
Redis counters the routers enforce (rebuilt from Postgres when Redis lost them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import MAX_BUDGET_USD, BudgetExceeded, BudgetStore, Limits
from switchboard_metering.budgets import Budgets
from switchboard_metering.keys import KeyStore
from tests.integration.test_metering_app import (
    Metering,
    field_violations,
    running_metering,
    test_settings,
    usage_event,
)


@pytest.fixture(scope="module")
async def metering(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Metering]:
    settings = test_settings(redis_prefix + "budgets:")
    async with running_metering(database_url, redis_url, settings) as running:
        yield running


def store(metering: Metering, client: redis.Redis) -> BudgetStore:
    return BudgetStore(client, metering.config.budget_prefix)


async def test_limits_credit_and_balance(metering: Metering, redis_client: redis.Redis) -> None:
    created = await metering.stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="prepaid-co", name="a")
    )
    key = created.api_key
    assert not key.HasField("limits") and not key.account_prepaid
    await metering.router.RecordUsage(
        metering_pb2.RecordUsageRequest(events=[usage_event(key.id, cost="0.40")])
    )
    limited = await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.id, limits=metering_pb2.SpendLimits(total_usd="1.5", daily_usd="0.5")
        )
    )
    assert (limited.api_key.limits.total_usd, limited.api_key.limits.daily_usd) == ("1.5", "0.5")
    budgets = store(metering, redis_client)
    spend = await budgets.key_spend(key.id, key.account_id)
    assert spend.total == Decimal("0.40")  # loaded from the ledger when the limit was set

    granted = await metering.stub.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="prepaid-co", amount_usd="2", note="inv-1")
    )
    assert granted.balance.prepaid
    assert (granted.balance.credit_usd, granted.balance.spent_usd) == ("2", "0.4")
    assert granted.balance.available_usd == "1.6"
    verified = await metering.router.VerifyApiKey(
        metering_pb2.VerifyApiKeyRequest(secret=created.secret)
    )
    assert verified.api_key.account_prepaid and verified.api_key.limits.total_usd == "1.5"

    held = await budgets.reserve(
        key.id, "prepaid-co", Decimal("0.05"), Limits(prepaid=True), ttl_seconds=60
    )
    balance = await metering.stub.GetBalance(metering_pb2.GetBalanceRequest(key_id=key.id))
    assert balance.key.spent_total_usd == "0.4" and balance.key.reserved_usd == "0.05"
    assert balance.account.available_usd == "1.55"
    await budgets.settle(held, Decimal(0))

    # Redis lost everything: a restarted metering rebuilds the counters from Postgres.
    prefix = metering.config.budget_prefix
    keys = [k async for k in redis_client.scan_iter(match=prefix + "*")]
    keys += [k async for k in redis_client.scan_iter(match="{" + prefix + "*")]
    await redis_client.delete(*keys)
    async with running_metering(
        metering.config.database_url, metering.config.redis_url, metering.config.outbox
    ) as restarted:
        rebuilt = store(restarted, redis_client)
        assert (await rebuilt.key_spend(key.id, key.account_id)).total == Decimal("0.40")
        assert (await rebuilt.account_balance("prepaid-co")).credit == Decimal(2)


async def test_bad_budget_requests_name_their_fields(metering: Metering) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(
                key_id="key_x", limits=metering_pb2.SpendLimits(total_usd="-1", monthly_usd="1e3")
            )
        )
    assert set(field_violations(bad.value)) == {"limits.total_usd", "limits.monthly_usd"}
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await metering.stub.SetKeyLimits(metering_pb2.SetKeyLimitsRequest(key_id="key_none"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as zero:
        await metering.stub.AddCredits(
            metering_pb2.AddCreditsRequest(account_id="x", amount_usd="0")
        )
    assert field_violations(zero.value) == ["amount_usd"]
    with pytest.raises(grpc.aio.AioRpcError) as both:
        await metering.stub.GetBalance(
            metering_pb2.GetBalanceRequest(account_id="x", key_id="key_x")
        )
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_changing_limits_or_adding_credit_keeps_spend_the_ledger_has_not_seen(
    metering: Metering, redis_client: redis.Redis
) -> None:
    created = await metering.stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="ahead-co", name="a")
    )
    key = created.api_key
    await metering.stub.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="ahead-co", amount_usd="1")
    )
    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.id, limits=metering_pb2.SpendLimits(total_usd="5")
        )
    )
    budgets = store(metering, redis_client)
    # A router settles $0.30 whose usage event is still in the outbox: Redis is ahead.
    held = await budgets.reserve(
        key.id, "ahead-co", Decimal("0.50"), Limits(total=Decimal(5), prepaid=True), ttl_seconds=60
    )
    await budgets.settle(held, Decimal("0.30"))

    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.id, limits=metering_pb2.SpendLimits(total_usd="4", daily_usd="2")
        )
    )
    granted = await metering.stub.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="ahead-co", amount_usd="0.25")
    )

    assert (await budgets.key_spend(key.id, key.account_id)).total == Decimal("0.30")
    account = await budgets.account_balance("ahead-co")
    assert (account.credit, account.spent) == (Decimal("1.25"), Decimal("0.30"))
    assert granted.balance.credit_usd == "1.25"

    # Clearing every limit stops enforcement; limits set again later load the ledger afresh.
    await metering.stub.SetKeyLimits(metering_pb2.SetKeyLimitsRequest(key_id=key.id))
    await metering.router.RecordUsage(
        metering_pb2.RecordUsageRequest(events=[usage_event(key.id, cost="0.70")])
    )
    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.id, limits=metering_pb2.SpendLimits(total_usd="3")
        )
    )
    assert (await budgets.key_spend(key.id, key.account_id)).total == Decimal("0.70")


async def test_resync_raises_counters_behind_the_ledger_and_never_lowers_them(
    metering: Metering, redis_client: redis.Redis
) -> None:
    created = await metering.stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="resync-co", name="a")
    )
    key = created.api_key
    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=key.id, limits=metering_pb2.SpendLimits(monthly_usd="5")
        )
    )
    await metering.stub.AddCredits(
        metering_pb2.AddCreditsRequest(account_id="resync-co", amount_usd="3")
    )
    budgets = store(metering, redis_client)
    # A generation reaches the ledger but its router's settle never reached Redis.
    await metering.router.RecordUsage(
        metering_pb2.RecordUsageRequest(events=[usage_event(key.id, cost="0.70")])
    )
    assert (await budgets.key_spend(key.id, key.account_id)).total == Decimal(0)
    pool = await asyncpg.create_pool(metering.config.database_url)
    assert pool is not None
    resync = Budgets(pool, KeyStore(pool), budgets)
    try:
        raised = await resync.resync()
        spend = await budgets.key_spend(key.id, key.account_id)
        assert (spend.total, spend.today, spend.this_month) == (Decimal("0.70"),) * 3
        assert (await budgets.account_balance("resync-co")).spent == Decimal("0.70")
        assert raised >= 4  # three windows of the key and the account's spend

        # Redis ahead of the ledger (a settle whose usage event is still in the outbox).
        held = await budgets.reserve(
            key.id, "resync-co", Decimal("0.5"), Limits(prepaid=True), ttl_seconds=60
        )
        await budgets.settle(held, Decimal("0.25"))
        await resync.resync()
        assert (await budgets.key_spend(key.id, key.account_id)).total == Decimal("0.95")
        assert (await budgets.account_balance("resync-co")).spent == Decimal("0.95")

        # A grant committed in Postgres whose Redis increment was lost comes back too.
        account_hash = budgets.account_key("resync-co")
        await redis_client.hset(account_hash, "credit", "1")
        assert await resync.resync() == 1
        assert (await budgets.account_balance("resync-co")).credit == Decimal(3)
    finally:
        await pool.close()


async def test_a_retried_grant_with_its_request_id_adds_credit_once(
    metering: Metering, redis_client: redis.Redis
) -> None:
    def grant(amount: str, request_id: str = "inv-42") -> metering_pb2.AddCreditsRequest:
        return metering_pb2.AddCreditsRequest(
            account_id="retry-co", amount_usd=amount, request_id=request_id
        )

    replies = await asyncio.gather(*(metering.stub.AddCredits(grant("10")) for _ in range(5)))
    assert sorted(reply.duplicate for reply in replies) == [False, True, True, True, True]
    again = await metering.stub.AddCredits(grant("10"))
    assert again.duplicate and again.balance.credit_usd == "10"
    assert (await store(metering, redis_client).account_balance("retry-co")).credit == 10

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await metering.stub.AddCredits(grant("11"))
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "inv-42" in (reused.value.details() or "")
    other = await metering.stub.AddCredits(grant("2.5", "inv-43"))
    assert not other.duplicate and other.balance.credit_usd == "12.5"
    with pytest.raises(grpc.aio.AioRpcError) as long_id:
        await metering.stub.AddCredits(grant("1", "x" * 129))
    assert field_violations(long_id.value) == ["request_id"]


async def test_credit_and_limits_stay_within_what_the_redis_counters_hold(
    metering: Metering, redis_client: redis.Redis
) -> None:
    """Two grants of $999,999,999,999.99 (the most a money string may say) were committed to
    Postgres, and the second overflowed the account's 64-bit pico-dollar counter in Redis:
    INTERNAL, with the ledger and the counters apart (found by tests/e2e/test_fuzz.py). A key
    limited to as much let a $214M worst case (max_tokens 2**31-1 at $100 a thousand tokens)
    overflow its reserved counter. Credit in all and limits are at most MAX_BUDGET_USD."""

    def grant(amount: str) -> metering_pb2.AddCreditsRequest:
        return metering_pb2.AddCreditsRequest(account_id="whale-co", amount_usd=amount)

    with pytest.raises(grpc.aio.AioRpcError) as huge:
        await metering.stub.AddCredits(grant("999999999999.999999999999"))
    assert field_violations(huge.value) == ["amount_usd"]
    await metering.stub.AddCredits(grant(str(MAX_BUDGET_USD - 1)))
    replies = await asyncio.gather(
        *(metering.stub.AddCredits(grant("0.75")) for _ in range(3)), return_exceptions=True
    )
    refused = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 2 and all(
        r.code() == grpc.StatusCode.FAILED_PRECONDITION for r in refused
    )
    balance = await metering.stub.GetBalance(metering_pb2.GetBalanceRequest(account_id="whale-co"))
    assert Decimal(balance.account.credit_usd) == MAX_BUDGET_USD - Decimal("0.25")
    counters = store(metering, redis_client)
    assert (await counters.account_balance("whale-co")).credit == MAX_BUDGET_USD - Decimal("0.25")

    key = await metering.stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="whale"))
    limits = metering_pb2.SpendLimits(total_usd="999999999999", daily_usd=str(MAX_BUDGET_USD))
    with pytest.raises(grpc.aio.AioRpcError) as too_high:
        await metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=limits)
        )
    assert field_violations(too_high.value) == ["limits.total_usd"]
    limits.total_usd = str(MAX_BUDGET_USD)
    await metering.stub.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=limits)
    )
    with pytest.raises(BudgetExceeded):
        await counters.reserve(
            key.api_key.id,
            "whale",
            Decimal("214748364.7"),
            Limits(total=MAX_BUDGET_USD, daily=MAX_BUDGET_USD),
            ttl_seconds=60,
        )


async def test_a_revoked_keys_limits_cannot_change(metering: Metering) -> None:
    created = await metering.stub.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="revoked-co")
    )
    await metering.stub.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=created.api_key.id))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(
                key_id=created.api_key.id, limits=metering_pb2.SpendLimits(total_usd="1")
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revoked" in (refused.value.details() or "")
