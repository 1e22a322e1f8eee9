"""Router admission against a real Redis, and against one that is down: limits that cannot be
checked are not waived, keys without limits never touch Redis, and a settle that cannot reach
Redis (and has no spool: test_redis_deadlines.py spools it) neither fails the request nor is
forgotten by the metrics."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as redis

from switchboard_core.budget import BudgetExceeded, BudgetStore, Limits
from switchboard_core.errors import Unavailable
from switchboard_core.pricing import PriceSheet, Rates, Tier, Window
from switchboard_core.redis_client import create_redis
from switchboard_router import metrics
from switchboard_router.admission import Admission, worst_case_cost, worst_case_sheet
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CACHE_1H,
    CACHE_5M,
    CompletionRequest,
    ImagePart,
    Message,
    Role,
    TextPart,
)
from switchboard_router.catalog_cache import Route

ROUTE = Route(
    endpoint_id="demo:m",
    model_id="m",
    provider_id="demo",
    api_format=1,
    base_url="http://demo.invalid/v1",
    dialect="demo",
    upstream_model="m",
    price=PriceSheet.flat("1", "2"),
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
    broken = Admission(BudgetStore(client, prefix), ceiling_tokens=4096, ttl_seconds=60)
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


# --- the worst case covers the dearest rates the request could meet -------------------------

D = Decimal
# Gemini 2.5 Pro: a prompt above 200K tokens is priced wholly at the higher tier.
TIERED = PriceSheet(
    Rates(prompt=D("1.25"), completion=D("10")),
    (Tier(200_000, Rates(prompt=D("2.5"), completion=D("15"))),),
)
# A peak window dearer than the base rates, 08:00 to 16:00 UTC.
PEAK = PriceSheet(
    Rates(prompt=D("1"), completion=D("2"), request=D("0.001")),
    windows=(Window(8 * 60, 16 * 60, Rates(prompt=D("3"), completion=D("6"))),),
)


def priced(sheet: PriceSheet) -> Route:
    return dataclasses.replace(ROUTE, price=sheet)


def asking(text: str, *parts: TextPart | ImagePart, max_tokens: int = 1_000) -> CompletionRequest:
    message = Message(Role.USER, (TextPart(text), *parts))
    return CompletionRequest(model="m", messages=(message,), max_tokens=max_tokens)


def test_a_prompt_that_may_pass_a_tier_threshold_is_reserved_at_that_tier() -> None:
    short = asking("x" * 1_000)
    near = asking("x" * 199_990)  # ~66K tokens by the estimate; up to ~201K by the bound
    far = asking("x" * 900_000)
    assert worst_case_sheet(TIERED, short).base == Rates(
        prompt=D("1.25"), completion=D("10"), request=D(0), image=D(0)
    )
    assert worst_case_sheet(TIERED, near).base.prompt == D("2.5")
    assert worst_case_sheet(TIERED, far).base.completion == D("15")
    # 300,006 prompt tokens reserved (3 bytes a token) at $2.50, 1,000 at $15.
    assert worst_case_cost(far, [priced(TIERED)], 4096) == D("0.765015")


def test_the_dearest_time_window_is_reserved_whatever_the_time() -> None:
    request = asking("hello")
    sheet = worst_case_sheet(PEAK, request)
    assert (sheet.base.prompt, sheet.base.completion, sheet.base.request) == (
        D("3"),
        D("6"),
        D("0.001"),  # fees are reserved too (the window inherits the base fee)
    )
    # A window cheaper than the base rates (an off-peak discount) never lowers the reservation.
    off_peak = PriceSheet(
        Rates(prompt=D("0.27"), completion=D("1.1")),
        windows=(Window(16 * 60 + 30, 30, Rates(prompt=D("0.135"), completion=D("0.55"))),),
    )
    assert worst_case_sheet(off_peak, request).base.prompt == D("0.27")


def test_cache_marks_and_images_reserve_their_dearer_rates_and_fees() -> None:
    sheet = PriceSheet(
        Rates(
            prompt=D("3"),
            completion=D("15"),
            cache_write=D("3.75"),
            cache_write_1h=D("6"),
            image_prompt=D("4"),
            image=D("0.002"),
            reasoning=D("20"),
        )
    )
    plain = worst_case_sheet(sheet, asking("hi"))
    assert (plain.base.prompt, plain.base.completion) == (D("3"), D("20"))
    five = asking("hi", TextPart("doc", CACHE_5M))
    assert worst_case_sheet(sheet, five).base.prompt == D("3.75")
    hour = asking("hi", TextPart("rules", CACHE_1H))
    assert worst_case_sheet(sheet, hour).base.prompt == D("6")
    picture = asking("what is it?", ImagePart(url="https://x/y.png"))
    assert worst_case_sheet(sheet, picture).base.prompt == D("4")
    # The per-image fee is reserved for each image.
    with_fee = worst_case_cost(picture, [priced(sheet)], 4096)
    without = worst_case_cost(picture, [priced(replace_image_fee(sheet))], 4096)
    assert with_fee - without == D("0.002")


def replace_image_fee(sheet: PriceSheet) -> PriceSheet:
    base = sheet.base
    return PriceSheet(Rates(**{**base.set_rates(), "image": D(0)}))


async def test_a_long_prompt_is_refused_where_its_tier_would_break_the_limit(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}admission:{uuid.uuid4().hex[:6]}:"
    admission = Admission(BudgetStore(redis_client, prefix), ceiling_tokens=4096, ttl_seconds=60)
    long = asking("x" * 750_000)  # 250,006 tokens reserved, and 1,000 completion tokens
    flat = priced(PriceSheet.flat("1.25", "10"))
    one = Caller("key_flat", "acct", Limits(daily=Decimal("0.50")))
    assert await admission.admit(one, long, [flat]) is not None  # $0.3225075 fits
    other = Caller("key_tiered", "acct", Limits(daily=Decimal("0.50")))
    with pytest.raises(BudgetExceeded):  # at the tier, $0.640015 does not
        await admission.admit(other, long, [priced(TIERED)])
