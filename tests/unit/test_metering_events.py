"""Usage event validation (named fields, bounds, the accepted window, poisoned events), outbox
entry parsing, and the backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_core.usage_bounds import (
    MAX_ATTEMPTS,
    MAX_COMPLETION_TOKENS,
    MAX_COST_USD,
    MAX_DURATION_MS,
    MAX_PROMPT_TOKENS,
    MAX_TEXT_CHARS,
)
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.event_rules import CostProblem, EventRules, EventWindow
from switchboard_metering.ledger import check_event, validate_events
from switchboard_metering.outbox import Backoff, parse_entry
from switchboard_metering.service import usage_range
from tests.fakes.poisoned_events import CASES, Case


def event(**fields: object) -> metering_pb2.UsageEvent:
    created = Timestamp()
    created.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    base: dict[str, object] = {
        "generation_id": "gen-1",
        "key_id": "key_1",
        "cost_usd": "0.001",
        "usage": common_pb2.Usage(prompt_tokens=3, completion_tokens=4),
        "create_time": created,
    }
    base.update(fields)
    return metering_pb2.UsageEvent(**base)  # type: ignore[arg-type]


def test_create_time_is_required() -> None:
    undated = event()
    undated.ClearField("create_time")
    assert check_event(undated, "events[0]") == [
        ("events[0].create_time", "required: it is part of the ledger's key")
    ]


def test_a_good_event_has_no_problems() -> None:
    assert check_event(event(), "events[0]") == []
    validate_events([event(), event(cost_usd="0")])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"generation_id": ""}, "generation_id"),
        ({"key_id": ""}, "key_id"),
        ({"cost_usd": ""}, "cost_usd"),
        ({"cost_usd": "-0.1"}, "cost_usd"),
        ({"cost_usd": "1e-9"}, "cost_usd"),
        ({"cost_usd": "NaN"}, "cost_usd"),
        ({"usage": common_pb2.Usage(completion_tokens=-1)}, "usage.completion_tokens"),
        ({"usage": common_pb2.Usage(cache_write_tokens=-5)}, "usage.cache_write_tokens"),
        ({"latency_ms": -1}, "latency_ms"),
    ],
)
def test_validation_names_the_bad_field(fields: dict[str, object], field: str) -> None:
    events = [event(), event(), event(), event(**fields)]
    with pytest.raises(InvalidArgument) as caught:
        validate_events(events)
    assert [name for name, _ in caught.value.violations] == [f"events[3].{field}"]


def test_every_bad_field_is_reported() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_events([event(generation_id="", cost_usd="x"), event(key_id="")])
    assert [name for name, _ in caught.value.violations] == [
        "events[0].generation_id",
        "events[0].cost_usd",
        "events[1].key_id",
    ]


def test_parse_entry() -> None:
    good = event()
    assert parse_entry({EVENT_FIELD: good.SerializeToString()}) == (good, "")
    assert parse_entry({b"x": b"1"}) == (None, "missing field e")
    assert parse_entry({EVENT_FIELD: b"\xff\xff"}) == (None, "not a serialized UsageEvent")
    bad = event(cost_usd="secret-looking-payload").SerializeToString()
    assert parse_entry({EVENT_FIELD: bad}) == (None, "invalid event.cost_usd")


def test_backoff_is_capped_and_resets() -> None:
    backoff = Backoff(cap=2.0, base=0.05)
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(0 < delay <= 2.0 for delay in delays)
    assert max(delays) > 1.0
    backoff.reset()
    assert backoff.next_delay() <= 0.05


def test_usage_range_defaults() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    assert usage_range(metering_pb2.QueryUsageRequest(), now) == (now - timedelta(days=30), now)
    request = metering_pb2.QueryUsageRequest()
    request.end_time.FromDatetime(datetime(2024, 1, 31, tzinfo=UTC))
    assert usage_range(request, now) == (
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 31, tzinfo=UTC),
    )
    request.start_time.FromDatetime(datetime(2024, 2, 1, tzinfo=UTC))
    with pytest.raises(InvalidArgument):
        usage_range(request, now)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_poisoned_event_is_refused_by_name(case: Case) -> None:
    events = [event(), event(), event(), case.apply(event())]
    with pytest.raises(InvalidArgument) as caught:
        validate_events(events)
    assert [name for name, _ in caught.value.violations] == [f"events[3].{case.field}"]
    # Messages name the bound, never the value: they reach logs and callers.
    [(_, why)] = caught.value.violations
    poisoned = events[3]
    for text in (poisoned.cost_usd, poisoned.key_id, poisoned.generation_id, poisoned.model_id):
        assert not text or len(text) < 3 or text not in why
    assert "\x00" not in why


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_poisoned_outbox_entry_is_named_without_its_contents(case: Case) -> None:
    raw = case.apply(event()).SerializeToString()
    assert parse_entry({EVENT_FIELD: raw}) == (None, f"invalid event.{case.field}")


def test_the_bounds_themselves_are_accepted() -> None:
    now = datetime.now(UTC)
    edge = event(
        generation_id="g" * MAX_TEXT_CHARS,
        usage=common_pb2.Usage(
            prompt_tokens=MAX_PROMPT_TOKENS,
            completion_tokens=MAX_COMPLETION_TOKENS,
            cached_tokens=MAX_PROMPT_TOKENS // 2,
            cache_write_tokens=MAX_PROMPT_TOKENS // 2,
            reasoning_tokens=MAX_COMPLETION_TOKENS,
        ),
        cost_usd=str(MAX_COST_USD),
        attempt=MAX_ATTEMPTS - 1,
        latency_ms=MAX_DURATION_MS,
        time_to_first_token_ms=MAX_DURATION_MS,
        finish_reason=common_pb2.FINISH_REASON_CANCELLED,
        status=metering_pb2.GENERATION_STATUS_FAILED,
        native_finish_reason="end_turn: ünïcödé is fine",
    )
    edge.create_time.FromDatetime(now - timedelta(days=400) + timedelta(minutes=1))
    assert check_event(edge, "e", now=now) == []
    edge.create_time.FromDatetime(now + timedelta(minutes=4))
    assert check_event(edge, "e", now=now) == []


def test_cost_is_bounded_by_its_tokens_and_fees() -> None:
    usage = common_pb2.Usage(prompt_tokens=10, completion_tokens=5)  # and the request: $1.60
    assert check_event(event(usage=usage, cost_usd="1.6"), "e") == []
    assert [f for f, _ in check_event(event(usage=usage, cost_usd="1.600000000001"), "e")] == [
        "e.cost_usd"
    ]
    # A request that spent no token may still owe a request fee, but not more than a unit.
    nothing = common_pb2.Usage()
    assert check_event(event(usage=nothing, cost_usd="0.1"), "e") == []
    assert [f for f, _ in check_event(event(usage=nothing, cost_usd="0.11"), "e")] == ["e.cost_usd"]
    # Searches and images are units too (their fees are per unit).
    searched = common_pb2.Usage(web_searches=3, input_images=2)
    assert check_event(event(usage=searched, cost_usd="0.6"), "e") == []
    assert [f for f, _ in check_event(event(usage=searched, cost_usd="0.61"), "e")] == [
        "e.cost_usd"
    ]


def test_the_window_follows_the_ledger_clock_and_settings() -> None:
    then = datetime(2024, 3, 1, 22, 15, tzinfo=UTC)
    old = event()
    old.create_time.FromDatetime(then)
    assert [f for f, _ in check_event(old, "e")] == ["e.create_time"]
    at_then = EventRules(EventWindow(clock=lambda: then + timedelta(days=2)))
    assert check_event(old, "e", at_then) == []
    strict = EventRules(EventWindow(max_age=timedelta(days=1), clock=lambda: then))
    old.create_time.FromDatetime(then - timedelta(days=1, seconds=1))
    assert [f for f, _ in check_event(old, "e", strict)] == ["e.create_time"]
    skewed = EventRules(EventWindow(max_skew=timedelta(0), clock=lambda: then))
    old.create_time.FromDatetime(then + timedelta(seconds=1))
    assert [f for f, _ in check_event(old, "e", skewed)] == ["e.create_time"]


class FakePrices:
    """A cost check: costs above $0.001 are wrong, settled unless ``settled`` is False."""

    def __init__(self, *, settled: bool = True) -> None:
        self.seen: list[tuple[Decimal, float | None]] = []
        self.settled = settled

    def __call__(
        self, checked: metering_pb2.UsageEvent, cost: Decimal, /, *, arrival: float | None
    ) -> CostProblem | None:
        self.seen.append((cost, arrival))
        if cost <= Decimal("0.001"):
            return None
        return CostProblem("cost_usd", "does not match the endpoint's price", self.settled)

    async def wait_settled(self, arrival: float) -> None:
        return None


def test_the_cost_check_seam_runs_last_and_names_the_cost() -> None:
    prices = FakePrices()
    rules = EventRules(cost_check=prices)
    assert check_event(event(cost_usd="0.001"), "e", rules) == []
    assert check_event(event(cost_usd="0.002"), "e", rules, arrival=12.5) == [
        ("e.cost_usd", "does not match the endpoint's price")
    ]
    check_event(event(cost_usd="5"), "e", rules)  # refused before the seam: over $0.10 a token
    assert prices.seen == [(Decimal("0.001"), None), (Decimal("0.002"), 12.5)]


def test_an_unsettled_cost_is_set_apart_only_when_the_caller_asks() -> None:
    rules = EventRules(cost_check=FakePrices(settled=False))
    later: list[tuple[str, str]] = []
    assert check_event(event(cost_usd="0.002"), "e", rules, unsettled=later) == []
    assert later == [("e.cost_usd", "does not match the endpoint's price")]
    # Without a place for them, unsettled problems are problems (strict).
    assert [f for f, _ in check_event(event(cost_usd="0.002"), "e", rules)] == ["e.cost_usd"]
    later.clear()
    validate_events([event(), event(cost_usd="0.002")], rules=rules, unsettled=later)
    assert later == [("events[1].cost_usd", "does not match the endpoint's price")]
    with pytest.raises(InvalidArgument) as caught:  # refused anyway: named with the rest
        validate_events([event(key_id=""), event(cost_usd="0.002")], rules=rules, unsettled=[])
    assert [f for f, _ in caught.value.violations] == ["events[0].key_id", "events[1].cost_usd"]
    raw = event(cost_usd="0.002").SerializeToString()
    assert parse_entry({EVENT_FIELD: raw}, rules) == (None, "unsettled event.cost_usd")


def test_at_most_twenty_violations_are_reported() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_events([event(key_id="", cost_usd="x") for _ in range(30)])
    assert len(caught.value.violations) == 20


counts = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-2, max_value=MAX_PROMPT_TOKENS + 2),
    st.integers(min_value=0, max_value=2_000),
)


@given(counts, counts, counts, counts, counts)
def test_token_checks_accept_exactly_the_counts_within_bounds(
    prompt: int, completion: int, cached: int, reasoning: int, cache_write: int
) -> None:
    usage = common_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        cache_write_tokens=cache_write,
    )
    in_bounds = (
        0 <= prompt <= MAX_PROMPT_TOKENS
        and 0 <= completion <= MAX_COMPLETION_TOKENS
        and 0 <= cached <= MAX_PROMPT_TOKENS
        and 0 <= cache_write <= MAX_PROMPT_TOKENS
        and 0 <= reasoning <= MAX_COMPLETION_TOKENS
    )
    consistent = cached + cache_write <= prompt and reasoning <= completion
    problems = check_event(event(usage=usage, cost_usd="0"), "e")
    assert (problems == []) == (in_bounds and consistent)
    assert all(field.startswith("e.usage.") for field, _ in problems)
