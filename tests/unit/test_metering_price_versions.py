"""The cost check on full price sheets and price versions: an event naming the version the
router billed with is priced with that version's sheet (tiers, time-of-day windows, input by
modality, fees) at its create_time; a version of another endpoint, or one not in force then,
is refused; an unknown one waits like an unknown endpoint; without versions, prices by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts, PriceSheet
from switchboard_core.usage_bounds import (
    MAX_COMPLETION_TOKENS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_TOKENS,
    MAX_WEB_SEARCHES,
    usage_problems,
)
from switchboard_metering.cost_check import (
    OTHER_ENDPOINTS_VERSION,
    UNKNOWN_VERSION,
    VERSION_NOT_IN_FORCE,
    PriceCheck,
)
from switchboard_metering.event_rules import CostProblem, EventRules, check_event
from switchboard_metering.prices import PriceBook
from tests.unit.test_metering_cost_check import LAG, SETTLE, SKEW, Clock, watch_of

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # noon UTC: outside the off-peak window
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

OLD = common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2")
# Gemini-like: rates by modality, reasoning apart, a long-context tier pricing the whole
# request, fees per request, image and search; and a DeepSeek-like off-peak window.
SHEET = common_pb2.Pricing(
    prompt_usd_per_mtok="1.25",
    completion_usd_per_mtok="10",
    cached_prompt_usd_per_mtok="0.3125",
    audio_prompt_usd_per_mtok="3",
    image_prompt_usd_per_mtok="2",
    reasoning_usd_per_mtok="12",
    request_usd="0.001",
    image_usd="0.002",
    web_search_usd="0.01",
    tiers=[
        common_pb2.PriceTier(
            prompt_tokens_above=200_000,
            pricing=common_pb2.Pricing(prompt_usd_per_mtok="2.5", completion_usd_per_mtok="15"),
        )
    ],
    windows=[
        common_pb2.PriceWindow(
            start_utc="16:30",
            end_utc="00:30",
            pricing=common_pb2.Pricing(prompt_usd_per_mtok="0.5"),
        )
    ],
)
OTHER = common_pb2.Pricing(prompt_usd_per_mtok="9", completion_usd_per_mtok="9")

USAGE = common_pb2.Usage(
    prompt_tokens=1000,
    cached_tokens=200,
    audio_prompt_tokens=300,
    image_prompt_tokens=100,
    completion_tokens=500,
    reasoning_tokens=100,
    web_searches=2,
    input_images=1,
)
# By hand: cached 200 x 0.3125 + audio 300 x 3 + image 100 x 2 + text 400 x 1.25 + reasoning
# 100 x 12 + completion text 400 x 10 = 6,862.5 micro-USD; fees 0.001 + 0.002 + 2 x 0.01.
AT_NOON = "0.0298625"
# Off-peak, text input at 0.5: 400 x 0.5 instead of 400 x 1.25, 300 micro-USD less.
OFF_PEAK = "0.0295625"


def change(at: datetime, pricing: common_pb2.Pricing, version: int) -> catalog_pb2.PriceChange:
    out = catalog_pb2.PriceChange(pricing=pricing, price_version=version)
    out.effective_time.FromDatetime(at)
    return out


def snapshot(*, versions: bool = True) -> catalog_pb2.WatchCatalogResponse:
    v = (lambda n: n) if versions else (lambda n: 0)
    return catalog_pb2.WatchCatalogResponse(
        version=9,
        price_history=[
            catalog_pb2.EndpointPriceHistory(
                endpoint_id="demo:m", changes=[change(EPOCH, OLD, v(11)), change(T0, SHEET, v(12))]
            ),
            catalog_pb2.EndpointPriceHistory(
                endpoint_id="other:x", changes=[change(EPOCH, OTHER, v(21))]
            ),
        ],
    )


def price_check(*, versions: bool = True) -> tuple[PriceCheck, Clock]:
    clock = Clock((T0 + timedelta(days=3)).timestamp())
    watch = watch_of(snapshot(versions=versions), clock)
    return PriceCheck(watch, lag=LAG, skew=SKEW, settle=SETTLE, clock=clock), clock


def event(
    at: datetime, cost: str, version: int, usage: common_pb2.Usage = USAGE
) -> metering_pb2.UsageEvent:
    out = metering_pb2.UsageEvent(
        generation_id="gen-1",
        key_id="key_1",
        endpoint_id="demo:m",
        usage=usage,
        cost_usd=cost,
        price_version=version,
    )
    out.create_time.FromDatetime(at)
    return out


def settled(check: PriceCheck, e: metering_pb2.UsageEvent) -> CostProblem | None:
    """The verdict on an event that arrived long ago (the view vouches for it)."""
    return check(e, Decimal(e.cost_usd), arrival=0.0)


def just_arrived(check: PriceCheck, clock: Clock, e: metering_pb2.UsageEvent) -> CostProblem | None:
    return check(e, Decimal(e.cost_usd), arrival=clock.now)


def sheet_cost(usage: common_pb2.Usage, at: datetime, pricing: common_pb2.Pricing = SHEET) -> str:
    return format_usd(PriceSheet.from_proto(pricing).cost(Counts.of(usage), at=at))


def test_the_hand_computed_costs_are_the_engines() -> None:
    assert sheet_cost(USAGE, T0) == AT_NOON
    assert sheet_cost(USAGE, T0 + timedelta(hours=8)) == OFF_PEAK


async def test_the_cost_of_the_named_version_is_accepted_and_one_digit_off_refused() -> None:
    check, _ = price_check()
    assert settled(check, event(T0 + timedelta(minutes=5), AT_NOON, 12)) is None
    # The window follows create_time: off-peak at 20:00 UTC, and the noon cost is wrong then.
    evening = T0 + timedelta(hours=8)
    assert settled(check, event(evening, OFF_PEAK, 12)) is None
    wrong_window = settled(check, event(evening, AT_NOON, 12))
    assert wrong_window is not None and wrong_window.field == "cost_usd"
    off = settled(check, event(T0 + timedelta(minutes=5), "0.0298626", 12))
    assert off is not None and off.field == "cost_usd" and off.settled
    assert "expected 0.0298625 (price version 12 of 2026-06-01T12:00:00Z); got 0.0298626" in (
        off.message
    )


async def test_a_long_prompt_is_priced_wholly_at_its_tier() -> None:
    check, _ = price_check()
    long = common_pb2.Usage(prompt_tokens=300_000, completion_tokens=1000)
    at = T0 + timedelta(minutes=5)
    tiered = sheet_cost(long, at)
    # 300,000 x 2.5 + 1,000 x 15 micro-USD, and the request fee.
    assert tiered == "0.766"
    assert settled(check, event(at, tiered, 12, long)) is None
    base_rates = format_usd(Decimal("300000") * Decimal("1.25") / 1_000_000 + Decimal("0.011"))
    refused = settled(check, event(at, base_rates, 12, long))
    assert refused is not None and refused.field == "cost_usd"


async def test_a_version_of_another_endpoint_is_refused_at_once() -> None:
    check, clock = price_check()
    cost = sheet_cost(USAGE, T0, OTHER)
    # Refused even when it just arrived: no later snapshot makes it this endpoint's.
    found = just_arrived(check, clock, event(T0 + timedelta(minutes=5), cost, 21))
    assert found == CostProblem("price_version", OTHER_ENDPOINTS_VERSION)
    # Through the event rules, the refusal names the field.
    rules = EventRules(cost_check=check)
    named = check_event(event(T0, cost, 21), "events[0]", rules, now=T0, arrival=clock.now)
    assert [f for f, _ in named] == ["events[0].price_version"]


async def test_a_version_not_in_force_around_create_time_is_refused() -> None:
    check, clock = price_check()
    old_cost = sheet_cost(USAGE, T0, OLD)
    # Inside the lag after the change, the old version is still honest ...
    assert settled(check, event(T0 + timedelta(minutes=5), old_cost, 11)) is None
    # ... two days later it is not, whatever the view's age.
    late = event(T0 + timedelta(days=2), old_cost, 11)
    assert just_arrived(check, clock, late) == CostProblem("price_version", VERSION_NOT_IN_FORCE)
    # Nor is a version that took effect after create_time (beyond the skew).
    early = event(T0 - timedelta(hours=1), AT_NOON, 12)
    assert settled(check, early) == CostProblem("price_version", VERSION_NOT_IN_FORCE)


async def test_an_unknown_version_waits_then_is_refused() -> None:
    check, clock = price_check()
    unknown = event(T0 + timedelta(minutes=5), AT_NOON, 99)  # a change on its way to metering
    waiting = just_arrived(check, clock, unknown)
    assert waiting == CostProblem("price_version", UNKNOWN_VERSION, settled=False)
    assert settled(check, unknown) == CostProblem("price_version", UNKNOWN_VERSION)


async def test_without_a_version_the_price_in_force_at_create_time_applies() -> None:
    check, _ = price_check()
    assert settled(check, event(T0 + timedelta(days=2), AT_NOON, 0)) is None
    assert settled(check, event(T0 + timedelta(days=2, hours=8), OFF_PEAK, 0)) is None
    wrong = settled(check, event(T0 + timedelta(days=2), OFF_PEAK, 0))
    assert wrong is not None and wrong.field == "cost_usd"
    assert "(price version 12 of 2026-06-01T12:00:00Z)" in wrong.message


async def test_a_catalog_without_versions_prices_by_time_whatever_the_event_names() -> None:
    check, _ = price_check(versions=False)
    assert settled(check, event(T0 + timedelta(days=2), AT_NOON, 12)) is None
    assert settled(check, event(T0 + timedelta(days=2), AT_NOON, 4242)) is None
    wrong = settled(check, event(T0 + timedelta(days=2), OFF_PEAK, 12))
    assert wrong is not None and wrong.field == "cost_usd"
    assert "(price of 2026-06-01T12:00:00Z)" in wrong.message


def test_the_book_knows_which_endpoint_each_version_belongs_to() -> None:
    book = PriceBook.from_proto(snapshot())
    assert book is not None
    assert book.version_owners == {11: "demo:m", 12: "demo:m", 21: "other:x"}
    prices = book.endpoints["demo:m"]
    assert prices.by_version == {11: 0, 12: 1}
    assert prices.sheets[1] == PriceSheet.from_proto(SHEET)
    unversioned = PriceBook.from_proto(snapshot(versions=False))
    assert unversioned is not None and not unversioned.version_owners


def test_a_malformed_sheet_in_the_history_is_named() -> None:
    bad = snapshot()
    bad.price_history[0].changes[1].pricing.windows[0].start_utc = "25:00"
    with pytest.raises(ValueError, match=r"demo:m.*windows\[0\]\.start_utc"):
        PriceBook.from_proto(bad)


# --- the bounds of the finer parts ------------------------------------------------------


def test_every_part_at_its_bound_and_within_its_total_is_accepted() -> None:
    assert not usage_problems(
        MAX_PROMPT_TOKENS,
        MAX_COMPLETION_TOKENS,
        cached_tokens=MAX_PROMPT_TOKENS // 2,
        reasoning_tokens=MAX_COMPLETION_TOKENS // 2,
        cache_write_tokens=MAX_PROMPT_TOKENS // 2,
        cache_write_1h_tokens=MAX_PROMPT_TOKENS // 2,
        audio_prompt_tokens=MAX_PROMPT_TOKENS // 2,
        image_prompt_tokens=MAX_PROMPT_TOKENS // 4,
        video_prompt_tokens=MAX_PROMPT_TOKENS // 4,
        cached_audio_tokens=MAX_PROMPT_TOKENS // 2,
        audio_completion_tokens=MAX_COMPLETION_TOKENS // 2,
        web_searches=MAX_WEB_SEARCHES,
        input_images=MAX_INPUT_IMAGES,
    )


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ({"cache_write_tokens": 5, "cache_write_1h_tokens": 6}, "cache_write_1h_tokens"),
        ({"audio_prompt_tokens": 50, "video_prompt_tokens": 51}, "audio_prompt_tokens"),
        (
            {"cached_tokens": 10, "audio_prompt_tokens": 5, "cached_audio_tokens": 6},
            "cached_audio_tokens",
        ),
        ({"reasoning_tokens": 40, "audio_completion_tokens": 11}, "audio_completion_tokens"),
        ({"web_searches": MAX_WEB_SEARCHES + 1}, "web_searches"),
        ({"input_images": -1}, "input_images"),
    ],
)
def test_a_part_outside_its_total_or_bound_is_named(parts: dict[str, int], field: str) -> None:
    found = usage_problems(100, 50, **parts)
    assert [p.field for p in found] == [field]
