"""The exact price check (switchboard_metering.cost_check) on a price view built from a
catalog snapshot: the window around create_time, unknown endpoints, the settle rule, no view,
and the router's own pricing (completed, cut short, and swept from its in-flight record).
The tests that build a price watch are async: it holds a gRPC aio channel (never connected)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from prometheus_client import REGISTRY

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.liveness import progress_value, template_value
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts, PriceSheet
from switchboard_metering.cost_check import PriceCheck
from switchboard_metering.event_rules import CostProblem, EventRules, check_event
from switchboard_metering.prices import PriceBook, PriceWatch
from switchboard_router.canonical import Finish, FinishEvent, UsageReport
from switchboard_router.generation import cost_of
from switchboard_router.inflight import progress, template
from switchboard_router.usage_sink import usage_event as router_event
from tests.unit.test_router_inflight import ROUTE, generation

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD, NEW = ("1", "2", "", ""), ("3", "4", "0.5", "6")  # USD per million tokens
LAG, SKEW, SETTLE = 600.0, 60.0, 10.0


def change(at: datetime, prices: tuple[str, str, str, str]) -> catalog_pb2.PriceChange:
    out = catalog_pb2.PriceChange(
        pricing=common_pb2.Pricing(
            prompt_usd_per_mtok=prices[0],
            completion_usd_per_mtok=prices[1],
            cached_prompt_usd_per_mtok=prices[2],
            cache_write_usd_per_mtok=prices[3],
        )
    )
    out.effective_time.FromDatetime(at)
    return out


def snapshot(*histories: catalog_pb2.EndpointPriceHistory) -> catalog_pb2.WatchCatalogResponse:
    return catalog_pb2.WatchCatalogResponse(version=7, price_history=histories)


# demo:m cost OLD from the epoch (recorded before history began) and NEW from T0.
HISTORY = catalog_pb2.EndpointPriceHistory(
    endpoint_id="demo:m",
    changes=[change(datetime(1970, 1, 1, tzinfo=UTC), OLD), change(T0, NEW)],
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def watch_of(message: catalog_pb2.WatchCatalogResponse | None, clock: Clock) -> PriceWatch:
    watch = PriceWatch(grpc.aio.insecure_channel("127.0.0.1:9"), clock=clock)
    if message is not None:
        watch.apply(message)
        watch._set_streaming(True)
    return watch


def price_check(
    message: catalog_pb2.WatchCatalogResponse | None = None, *, now: datetime | None = None
) -> tuple[PriceCheck, PriceWatch, Clock]:
    clock = Clock((now or T0 + timedelta(hours=1)).timestamp())
    watch = watch_of(snapshot(HISTORY) if message is None else message, clock)
    return PriceCheck(watch, lag=LAG, skew=SKEW, settle=SETTLE, clock=clock), watch, clock


def usage_event(
    at: datetime, cost: str, *, endpoint: str = "demo:m", cached: int = 0
) -> metering_pb2.UsageEvent:
    event = metering_pb2.UsageEvent(
        generation_id="gen-1",
        key_id="key_1",
        endpoint_id=endpoint,
        usage=common_pb2.Usage(
            prompt_tokens=1000, completion_tokens=500, cached_tokens=cached, cache_write_tokens=0
        ),
        cost_usd=cost,
    )
    event.create_time.FromDatetime(at)
    return event


def cost_at(prices: tuple[str, str, str, str], cached: int = 0) -> str:
    return format_usd(PriceSheet.flat(*prices).cost(Counts(1000, 500, cached_tokens=cached)))


def verdict(check: PriceCheck, event: metering_pb2.UsageEvent) -> CostProblem | None:
    """The check of an event that arrived long ago (the view has settled it)."""
    return check(event, Decimal(event.cost_usd), arrival=0.0)


def unverified(reason: str) -> float:
    value = REGISTRY.get_sample_value("switchboard_usage_cost_unverified_total", {"reason": reason})
    return value or 0.0


async def test_a_cost_matching_the_price_in_effect_is_accepted() -> None:
    check, _, _ = price_check()
    assert verdict(check, usage_event(T0 + timedelta(minutes=5), cost_at(NEW))) is None
    assert verdict(check, usage_event(T0 - timedelta(days=300), cost_at(OLD))) is None
    # Cached tokens at the cached price; an empty cached price is the prompt price.
    later = usage_event(T0 + timedelta(minutes=5), cost_at(NEW, cached=400), cached=400)
    assert verdict(check, later) is None
    assert cost_at(OLD, cached=400) == cost_at(OLD)


async def test_the_old_price_is_accepted_within_the_lag_and_skew_after_a_change() -> None:
    check, _, _ = price_check()
    # The router's snapshot lagged: the old price until lag + skew after the change.
    inside = T0 + timedelta(seconds=LAG + SKEW) - timedelta(microseconds=1)
    assert verdict(check, usage_event(inside, cost_at(OLD))) is None
    # The new price up to the skew before it (the router's clock behind the catalog's).
    assert verdict(check, usage_event(T0 - timedelta(seconds=SKEW), cost_at(NEW))) is None
    late = verdict(check, usage_event(T0 + timedelta(seconds=LAG + SKEW), cost_at(OLD)))
    assert late is not None and late.field == "cost_usd" and late.settled
    early = verdict(check, usage_event(T0 - timedelta(seconds=SKEW + 1), cost_at(NEW)))
    assert early is not None and early.field == "cost_usd"


async def test_a_wrong_cost_is_refused_naming_the_expected_and_given_costs() -> None:
    check, _, _ = price_check()
    at = T0 + timedelta(seconds=30)  # both prices were in effect around it
    problem = verdict(check, usage_event(at, "0.5"))
    assert problem is not None and problem.settled and problem.field == "cost_usd"
    assert cost_at(OLD) in problem.message and cost_at(NEW) in problem.message
    assert "one of" in problem.message and problem.message.endswith("got 0.5")
    forged = str(Decimal(cost_at(NEW)) * 1000)
    problem = verdict(check, usage_event(T0 + timedelta(days=1), forged))
    assert problem is not None
    assert problem.message == (
        f"must be the endpoint's price for the usage: expected {cost_at(NEW)}"
        f" (price of 2026-06-01T12:00:00Z); got {format_usd(Decimal(forged))}"
    )


async def test_an_endpoint_the_catalog_does_not_have_is_refused_by_its_id() -> None:
    check, _, _ = price_check()
    problem = verdict(check, usage_event(T0, cost_at(NEW), endpoint="demo:nope"))
    assert problem == CostProblem("endpoint_id", "not an endpoint of the catalog")
    rules = EventRules(cost_check=check)
    event = usage_event(datetime.now(UTC), cost_at(NEW), endpoint="")
    assert [f for f, _ in check_event(event, "events[0]", rules)] == ["events[0].endpoint_id"]


async def test_a_mismatch_arriving_within_the_settle_time_is_unsettled_not_refused() -> None:
    check, _, clock = price_check()
    event = usage_event(T0 + timedelta(days=1), "0.5")
    problem = check(event, Decimal("0.5"), arrival=clock.now - SETTLE / 2)
    assert problem is not None and not problem.settled  # a price change may be on its way
    problem = check(event, Decimal("0.5"), arrival=clock.now - SETTLE)
    assert problem is not None and problem.settled
    problem = check(event, Decimal("0.5"), arrival=None)  # None: arrived now
    assert problem is not None and not problem.settled


async def test_after_the_watch_broke_a_late_arrival_is_accepted_unverified() -> None:
    check, watch, clock = price_check()
    event = usage_event(T0 + timedelta(days=1), "0.5")
    arrival = clock.now
    watch._set_streaming(False)  # broke now: what changed since is unknown
    before = unverified("view_stale")
    assert check(event, Decimal("0.5"), arrival=arrival) is None
    assert unverified("view_stale") == before + 1
    # An arrival the view had settled before it broke is still refused.
    problem = check(event, Decimal("0.5"), arrival=arrival - SETTLE)
    assert problem is not None and problem.settled


async def test_without_a_view_events_are_accepted_counted_and_warned_about_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(T0.timestamp())
    check = PriceCheck(watch_of(None, clock), lag=LAG, skew=SKEW, clock=clock)
    before = unverified("no_view")
    with caplog.at_level(logging.WARNING, logger="switchboard_metering.cost_check"):
        for _ in range(3):
            assert verdict(check, usage_event(T0, "9.99")) is None
        clock.now += 61
        assert verdict(check, usage_event(T0, "9.99")) is None
    assert unverified("no_view") == before + 4
    warnings = [r for r in caplog.records if "unverified" in r.getMessage()]
    assert len(warnings) == 2 and warnings[1].events == 3  # type: ignore[attr-defined]


def test_a_catalog_that_sends_no_history_gives_no_view() -> None:
    endpoint = catalog_pb2.Endpoint(id="demo:m", model_id="demo/m", provider_id="demo")
    old_catalog = catalog_pb2.WatchCatalogResponse(
        version=3, models=[catalog_pb2.Model(id="demo/m", endpoints=[endpoint])]
    )
    assert PriceBook.from_proto(old_catalog) is None
    assert PriceBook.from_proto(catalog_pb2.WatchCatalogResponse(version=1)) is not None


async def test_wait_settled_returns_when_new_prices_arrive() -> None:
    check, watch, clock = price_check()
    started = time.monotonic()
    waiting = asyncio.create_task(check.wait_settled(clock.now))
    await asyncio.sleep(0.05)
    watch.apply(snapshot(HISTORY))
    await asyncio.wait_for(waiting, 1.0)
    assert time.monotonic() - started < 1.0
    await check.wait_settled(clock.now - SETTLE)  # settled already: no wait


async def test_the_routers_own_costs_pass_completed_cut_short_and_swept() -> None:
    """The router prices with ``cost_of`` on the usage it reports, for a completed
    generation, one cut short (estimated usage), and the FAILED event its in-flight record
    leaves for metering's sweep (template and progress merged as the sweep does)."""
    g = generation()
    history = catalog_pb2.EndpointPriceHistory(
        endpoint_id=ROUTE.endpoint_id,
        changes=[change(datetime(2020, 1, 1, tzinfo=UTC), ("1", "2", "", ""))],
    )
    check, _, _ = price_check(snapshot(history), now=datetime.now(UTC) + timedelta(minutes=1))
    rules = EventRules(cost_check=check)
    usage = UsageReport(prompt_tokens=1234, completion_tokens=77, cached_tokens=34)
    done = router_event(
        g,
        metering_pb2.GENERATION_STATUS_COMPLETED,
        usage,
        cost_of(ROUTE, usage, at=g.create_time),
        FinishEvent(Finish.STOP, ""),
    )
    g.text_chars = 321
    cut = g.final_usage()
    assert cut.estimated
    cancelled = router_event(
        g,
        metering_pb2.GENERATION_STATUS_CANCELLED,
        cut,
        cost_of(ROUTE, cut, at=g.create_time),
        FinishEvent(Finish.CANCELLED, ""),
    )
    record = template(g).split(b" ", 1)[1]
    g.text_chars = 4000  # a later heartbeat: more output
    latest = progress(g).split(b" ", 1)[1]
    assert template_value("", record).endswith(record) and progress_value(1, latest).endswith(
        latest
    )
    swept = metering_pb2.UsageEvent.FromString(record + latest)
    assert swept.status == metering_pb2.GENERATION_STATUS_FAILED
    for event in (done, cancelled, swept):
        assert check_event(event, "e", rules) == [], event.status
    assert swept.usage.completion_tokens == 1000  # the later heartbeat's
