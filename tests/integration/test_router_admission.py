"""Router admission against a real Redis, and against one that is down: limits that cannot be
checked are not waived, keys without limits never touch Redis, and a settle that cannot reach
Redis neither fails the request nor is forgotten by the metrics."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as redis

from switchboard_core.budget import BudgetExceeded, BudgetStore, Limits
from switchboard_core.errors import Unavailable
from switchboard_core.money import Price
from switchboard_core.redis_client import create_redis
from switchboard_router import metrics
from switchboard_router.admission import Admission, worst_case_cost
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, Message, Role
from switchboard_router.catalog_cache import Route

ROUTE = Route(
    endpoint_id="demo:m",
    model_id="m",
    provider_id="demo",
    api_format=1,
    base_url="http://demo.invalid/v1",
    dialect="demo",
    upstream_model="m",
    price=Price.parse("1", "2"),
    context_length=8192,
    max_completion_tokens=1000,
    supported_parameters=frozenset(),
)
REQUEST = CompletionRequest(model="m", messages=(Message.of(Role.USER, "hi"),), max_tokens=100)
LIMITED = Caller("key_limited", "acct", Limits(daily=Decimal(1)))


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def down() -> AsyncIterator[Admission]:
    client = create_redis(f"redis://127.0.0.1:{dead_port()}/0")  # as the router makes it
    yield Admission(BudgetStore(client, "sbtest:down:"), ceiling_tokens=4096, ttl_seconds=60)
    await client.aclose()


async def test_a_limited_key_is_refused_unavailable_when_redis_is_down(down: Admission) -> None:
    before = metrics.BUDGET_ADMISSIONS.labels("unavailable")._value.get()
    with pytest.raises(Unavailable) as refused:
        await down.admit(LIMITED, REQUEST, [ROUTE])
    assert refused.value.reason == "BUDGET_STORE_UNAVAILABLE"
    assert metrics.BUDGET_ADMISSIONS.labels("unavailable")._value.get() == before + 1


async def test_a_key_without_limits_never_asks_redis(down: Admission) -> None:
    assert await down.admit(Caller("key_free", "acct"), REQUEST, [ROUTE]) is None


async def test_a_settle_that_cannot_reach_redis_is_counted_not_raised(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}admission:{uuid.uuid4().hex[:6]}:"
    admission = Admission(BudgetStore(redis_client, prefix), ceiling_tokens=4096, ttl_seconds=60)
    reservation = await admission.admit(LIMITED, REQUEST, [ROUTE])
    assert reservation is not None
    assert reservation.amount == worst_case_cost(REQUEST, [ROUTE], 4096)

    client = create_redis(f"redis://127.0.0.1:{dead_port()}/0")
    broken = Admission(
        BudgetStore(client, prefix), ceiling_tokens=4096, ttl_seconds=60, settle_retry_delays=()
    )
    before = metrics.BUDGET_SETTLE_FAILURES._value.get()
    await broken.settle(reservation, Decimal("0.0001"))
    assert metrics.BUDGET_SETTLE_FAILURES._value.get() == before + 1
    await client.aclose()


async def test_refusals_name_their_window(redis_client: redis.Redis, redis_prefix: str) -> None:
    prefix = f"{redis_prefix}admission:{uuid.uuid4().hex[:6]}:"
    admission = Admission(BudgetStore(redis_client, prefix), ceiling_tokens=4096, ttl_seconds=60)
    tight = Caller("key_tight", "acct", Limits(monthly=Decimal("0.0001")))
    before = metrics.BUDGET_ADMISSIONS.labels("monthly")._value.get()
    with pytest.raises(BudgetExceeded) as refused:
        await admission.admit(tight, REQUEST, [ROUTE])
    assert (refused.value.window, refused.value.reason) == ("monthly", "KEY_LIMIT_EXCEEDED")
    assert metrics.BUDGET_ADMISSIONS.labels("monthly")._value.get() == before + 1
