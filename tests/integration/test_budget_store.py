"""Reservations against spend limits and prepaid credit, atomic in a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as redis

from switchboard_core.budget import (
    BudgetExceeded,
    BudgetStore,
    KeySpend,
    Limits,
    day_field,
    holds_key,
    month_field,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(redis_client: redis.Redis, redis_prefix: str) -> BudgetStore:
    return BudgetStore(redis_client, prefix=f"{redis_prefix}budget:{uuid.uuid4().hex[:6]}:")


async def test_fifty_concurrent_reservations_where_ten_fit(store: BudgetStore) -> None:
    limits = Limits(total=Decimal("0.0205"))
    cost = Decimal("0.002005")
    results = await asyncio.gather(
        *(store.reserve("k1", "a1", cost, limits, ttl_seconds=60, now=NOW) for _ in range(50)),
        return_exceptions=True,
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(admitted), len(refused)) == (10, 40)
    assert refused[0].reason == "KEY_LIMIT_EXCEEDED" and refused[0].window == "total"
    assert (await store.key_spend("k1", "a1", NOW)).reserved == 10 * cost
    for reservation in admitted:
        await store.settle(reservation, Decimal("0.000045"), now=NOW)
    spend = await store.key_spend("k1", "a1", NOW)
    assert spend.reserved == 0
    assert spend.total == spend.today == spend.this_month == 10 * Decimal("0.000045")
    assert spend.total <= limits.total  # type: ignore[operator]


async def test_daily_and_monthly_windows_and_prepaid_credit(store: BudgetStore) -> None:
    await store.load_key("k2", "a2", Decimal(5), Decimal("0.9"), Decimal("2.5"), NOW)
    daily = Limits(total=Decimal(100), daily=Decimal(1))
    with pytest.raises(BudgetExceeded) as over_day:
        await store.reserve("k2", "a2", Decimal("0.2"), daily, ttl_seconds=60, now=NOW)
    assert over_day.value.window == "daily"
    assert over_day.value.metadata["remaining_usd"] == "0.1"
    tomorrow = NOW.replace(day=25)
    fits = await store.reserve("k2", "a2", Decimal("0.2"), daily, ttl_seconds=60, now=tomorrow)
    await store.settle(fits, Decimal("0.15"), now=tomorrow)
    monthly = Limits(monthly=Decimal("2.6"))
    with pytest.raises(BudgetExceeded) as over_month:
        await store.reserve("k2", "a2", Decimal("0.1"), monthly, ttl_seconds=60, now=tomorrow)
    assert over_month.value.window == "monthly"  # 2.5 + 0.15 already spent this month

    await store.load_account("a3", credit=Decimal("1.00"), spent=Decimal("0.70"))
    prepaid = Limits(prepaid=True)
    held = await store.reserve("k3", "a3", Decimal("0.25"), prepaid, ttl_seconds=60, now=NOW)
    with pytest.raises(BudgetExceeded) as broke:
        await store.reserve("k4", "a3", Decimal("0.10"), prepaid, ttl_seconds=60, now=NOW)
    assert broke.value.reason == "INSUFFICIENT_CREDIT"  # another key of the same account
    await store.settle(held, Decimal("0.05"), now=NOW)
    balance = await store.account_balance("a3")
    assert (balance.spent, balance.reserved, balance.available) == (
        Decimal("0.75"),
        Decimal(0),
        Decimal("0.25"),
    )


async def test_reservations_of_a_crashed_router_expire(store: BudgetStore) -> None:
    limits = Limits(total=Decimal("1"))
    lost = await store.reserve("k5", "a5", Decimal("0.6"), limits, ttl_seconds=0.2, now=NOW)
    with pytest.raises(BudgetExceeded):
        await store.reserve("k5", "a5", Decimal("0.6"), limits, ttl_seconds=0.2, now=NOW)
    await asyncio.sleep(0.3)  # the router holding the first one stalled past its expiry
    again = await store.reserve("k5", "a5", Decimal("0.6"), limits, ttl_seconds=60, now=NOW)
    assert (await store.key_spend("k5", "a5", NOW)).reserved == Decimal("0.6")
    await store.settle(again, Decimal("0.4"), now=NOW)
    # A late settle of the expired one counts what it spent and releases nothing twice.
    await store.settle(lost, Decimal("0.1"), now=NOW)
    spend = await store.key_spend("k5", "a5", NOW)
    assert spend == KeySpend(Decimal("0.5"), Decimal("0.5"), Decimal("0.5"), Decimal(0))


async def test_a_load_that_does_not_replace_leaves_loaded_counters_alone(
    store: BudgetStore,
) -> None:
    assert await store.load_key("k9", "a9", Decimal(1), Decimal(0), Decimal(1), NOW, replace=False)
    assert not await store.load_key(
        "k9", "a9", Decimal(0), Decimal(0), Decimal(0), NOW, replace=False
    )
    assert (await store.key_spend("k9", "a9", NOW)).total == Decimal(1)
    await store.unload_key("k9", "a9")
    assert await store.load_key("k9", "a9", Decimal(2), Decimal(0), Decimal(2), NOW, replace=False)
    assert (await store.key_spend("k9", "a9", NOW)).total == Decimal(2)
    assert await store.load_account("a9", Decimal(3), Decimal(1))
    await store.add_credit("a9", Decimal("0.5"), grant_id="g1")
    await store.add_credit("a9", Decimal("0.5"), grant_id="g1")  # a retry adds nothing
    assert (await store.account_balance("a9")).credit == Decimal("3.5")
    assert await store.account_loaded("a9") and not await store.account_loaded("a10")


async def test_raising_counters_compares_exactly_past_double_precision(store: BudgetStore) -> None:
    big = Decimal("12345.000000000001")  # 1.2e16 pico-dollars: beyond a double's exact range
    assert await store.raise_key("k11", "a11", big, big, big, NOW) == 0  # not loaded: left alone
    await store.load_key("k11", "a11", big, big, big, NOW)
    assert await store.raise_key("k11", "a11", big, big, big, NOW) == 0
    higher = big + Decimal("0.000000000001")
    assert await store.raise_key("k11", "a11", higher, big, Decimal(1), NOW) == 1
    spend = await store.key_spend("k11", "a11", NOW)
    assert (spend.total, spend.today, spend.this_month) == (higher, big, big)


async def test_raising_deletes_the_counters_of_days_and_months_past(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}budget:{uuid.uuid4().hex[:6]}:"
    store = BudgetStore(redis_client, prefix=prefix)
    for when in (NOW - timedelta(days=40), NOW - timedelta(days=1), NOW):
        await store.load_key("k12", "a12", Decimal(1), Decimal(1), Decimal(1), when)
    await store.raise_key("k12", "a12", Decimal(1), Decimal(1), Decimal(1), NOW)
    fields = sorted(
        f.decode() if isinstance(f, bytes) else f
        for f in await redis_client.hkeys(store.key_key("k12", "a12"))
    )
    assert fields == sorted(
        ["loaded", "raises", "spent_total", day_field(NOW), month_field(NOW)]
    )  # "raises": how often metering loaded or raised them, which a late settle checks


async def test_a_retried_reserve_or_settle_counts_once(store: BudgetStore) -> None:
    limits = Limits(daily=Decimal(1), prepaid=True)
    await store.load_account("a13", credit=Decimal(1), spent=Decimal(0))
    first = await store.reserve(
        "k13", "a13", Decimal("0.4"), limits, ttl_seconds=60, reservation_id="r-retry", now=NOW
    )
    again = await store.reserve(
        "k13", "a13", Decimal("0.4"), limits, ttl_seconds=60, reservation_id="r-retry", now=NOW
    )
    assert again == first
    assert (await store.key_spend("k13", "a13", NOW)).reserved == Decimal("0.4")
    assert (await store.account_balance("a13")).reserved == Decimal("0.4")

    await store.settle(first, Decimal("0.1"), now=NOW)
    await store.settle(first, Decimal("0.1"), now=NOW)
    spend = await store.key_spend("k13", "a13", NOW)
    assert (spend.total, spend.today, spend.reserved) == (
        Decimal("0.1"),
        Decimal("0.1"),
        Decimal(0),
    )
    account = await store.account_balance("a13")
    assert (account.spent, account.reserved) == (Decimal("0.1"), Decimal(0))


async def test_a_holders_reserves_index_the_account_for_the_sweep(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}budget:{uuid.uuid4().hex[:6]}:"
    limits = Limits(total=Decimal(1))
    for memo, indexed_again in ((0.0, True), (60.0, False)):
        store = BudgetStore(redis_client, prefix=prefix, index_memo_seconds=memo)
        await redis_client.delete(holds_key(prefix, "r1"))
        first = await store.reserve(
            "k14", "a14", Decimal("0.1"), limits, ttl_seconds=60, holder="r1"
        )
        assert await store.held_accounts("r1") == ["a14"]
        await redis_client.delete(holds_key(prefix, "r1"))
        await store.reserve("k14", "a14", Decimal("0.1"), limits, ttl_seconds=60, holder="r1")
        # Within the memo the account is known indexed: no SADD (a command per request saved).
        assert await store.held_accounts("r1") == (["a14"] if indexed_again else [])
        await store.reserve("k15", "a15", Decimal("0.1"), limits, ttl_seconds=60, holder="r1")
        assert "a15" in await store.held_accounts("r1")
        await store.settle(first, Decimal(0))
    # A leaving router's index keeps only the accounts where it still holds something.
    await redis_client.sadd(holds_key(prefix, "r1"), "a14", "a-nothing")
    assert await store.prune_holds("r1") == 2  # a14 and a15: reservations still held
    assert sorted(await store.held_accounts("r1")) == ["a14", "a15"]
