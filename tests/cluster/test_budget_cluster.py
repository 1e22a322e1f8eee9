"""Budgets on a real Redis Cluster: every script touches one account's slot, and the
guarantees of tests/integration/test_budget_store.py hold there too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from switchboard_core.budget import BudgetExceeded, BudgetStore, KeySpend, Limits, to_pico
from switchboard_core.liveness import Liveness, progress_value, template_value
from switchboard_core.redis_client import create_redis
from switchboard_core.usage_outbox import EVENT_FIELD

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
async def second(cluster_url: str) -> AsyncIterator[redis.Redis]:
    """Another router's client: its own connections to every node."""
    client = create_redis(cluster_url, timeout=5.0, cluster=True)
    yield client
    await client.aclose()


async def test_concurrent_reserves_from_two_routers_never_overspend_one_account(
    cluster: redis.Redis, second: redis.Redis, prefix: str
) -> None:
    stores = [BudgetStore(cluster, prefix), BudgetStore(second, prefix)]
    await stores[0].load_account("acct-race", credit=Decimal("0.0205"), spent=Decimal(0))
    prepaid = Limits(prepaid=True, total=Decimal(1))
    cost = Decimal("0.002005")
    results = await asyncio.gather(
        *(
            stores[i % 2].reserve(
                f"k{i % 3}", "acct-race", cost, prepaid, ttl_seconds=60, now=NOW, holder=f"r{i % 2}"
            )
            for i in range(60)
        ),
        return_exceptions=True,
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(admitted), len(refused)) == (10, 50)  # 10 fit in the credit, on any key
    assert refused[0].reason == "INSUFFICIENT_CREDIT"
    assert (await stores[1].account_balance("acct-race")).reserved == 10 * cost
    await asyncio.gather(*(stores[0].settle(r, Decimal("0.001"), now=NOW) for r in admitted))
    balance = await stores[1].account_balance("acct-race")
    assert (balance.spent, balance.reserved) == (10 * Decimal("0.001"), Decimal(0))
    spends = [await stores[0].key_spend(f"k{i}", "acct-race", NOW) for i in range(3)]
    assert sum(s.total for s in spends) == balance.spent
    assert all(s.reserved == 0 for s in spends)


async def test_expired_reservations_return_and_late_settles_count_once(
    cluster: redis.Redis, prefix: str
) -> None:
    store = BudgetStore(cluster, prefix)
    limits = Limits(total=Decimal(1))
    lost = await store.reserve("k5", "a5", Decimal("0.6"), limits, ttl_seconds=0.2, now=NOW)
    with pytest.raises(BudgetExceeded):
        await store.reserve("k5", "a5", Decimal("0.6"), limits, ttl_seconds=0.2, now=NOW)
    await asyncio.sleep(0.3)  # its router stalled past the expiry: the next reserve frees it
    again = await store.reserve("k5", "a5", Decimal("0.6"), limits, ttl_seconds=60, now=NOW)
    await store.settle(again, Decimal("0.4"), now=NOW)
    assert await store.settle(again, Decimal("0.4"), now=NOW) is False  # a retry
    assert await store.settle(lost, Decimal("0.1"), late=True, now=NOW) is False  # not held
    spend = await store.key_spend("k5", "a5", NOW)
    assert spend == KeySpend(Decimal("0.4"), Decimal("0.4"), Decimal("0.4"), Decimal(0))
    await store.load_account("a5", Decimal(3), Decimal(1))
    await store.add_credit("a5", Decimal("0.5"), grant_id="g1")
    await store.add_credit("a5", Decimal("0.5"), grant_id="g1")  # a retry adds nothing
    assert (await store.account_balance("a5")).credit == Decimal("3.5")
    assert await store.raise_key("k5", "a5", Decimal(2), Decimal(2), Decimal(2), NOW) == 0
    await store.load_key("k5", "a5", Decimal(1), Decimal(1), Decimal(1), NOW)
    assert await store.raise_key("k5", "a5", Decimal(2), Decimal(1), Decimal(1), NOW) == 1


async def test_a_dead_routers_reservations_in_many_accounts_are_swept_once(
    cluster: redis.Redis, prefix: str
) -> None:
    store, stream = BudgetStore(cluster, prefix), prefix + "usage"
    liveness = Liveness(cluster, prefix, stream)
    limits = Limits(total=Decimal(1))
    await liveness.beat("router-dead", 0.2, templates={}, progress={})
    held = [
        await store.reserve(
            f"k{i}", f"acct-{i}", Decimal("0.3"), limits, ttl_seconds=600, holder="router-dead"
        )
        for i in range(12)  # accounts spread over the three nodes
    ]
    other = await store.reserve(
        "k0", "acct-0", Decimal("0.3"), limits, ttl_seconds=600, holder="router-alive"
    )
    await store.settle(held[0], Decimal("0.1"))  # settled by the router before it died
    # One generation was streaming under held[1]: its FAILED event and cost so far.
    await liveness.beat(
        "router-dead",
        0.2,
        templates={"gen-1:0": template_value(held[1].id, b"template")},
        progress={"gen-1:0": progress_value(to_pico(Decimal("0.05")), b"+progress")},
    )
    # redis-cli gives each of the three nodes a third of the slots: several nodes hold some.
    thirds = {key_slot(store.account_key(f"acct-{i}").encode()) * 3 // 16384 for i in range(12)}
    assert len(thirds) > 1
    await asyncio.sleep(0.3)
    assert await liveness.dead() == ["router-dead"]

    sweeps = await asyncio.gather(*(liveness.sweep("router-dead", store) for _ in range(3)))
    done = [s for s in sweeps if s is not None]
    assert [(s.generations, s.reservations) for s in done] == [(1, 11)]
    entries: Any = await cluster.xrange(stream)
    assert [fields[EVENT_FIELD] for _, fields in entries] == [b"template+progress"]
    assert await liveness.sweep("router-dead", store) is None  # swept already
    assert await liveness.dead() == []
    for i in range(12):
        spend = await store.key_spend(f"k{i}", f"acct-{i}")
        reserved = Decimal("0.3") if i == 0 else Decimal(0)  # router-alive's is kept
        spent = {0: Decimal("0.1"), 1: Decimal("0.05")}.get(i, Decimal(0))  # swept: its cost
        assert (spend.total, spend.reserved) == (spent, reserved)
    assert await store.held_accounts("router-dead") == []
    assert await store.settle(other, Decimal("0.2")) is True
