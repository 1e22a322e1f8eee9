"""Usage event validation (named fields), outbox entry parsing, and the backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_metering.ledger import check_event, validate_events
from switchboard_metering.outbox import Backoff, parse_entry
from switchboard_metering.service import usage_range


def event(**fields: object) -> metering_pb2.UsageEvent:
    base: dict[str, object] = {
        "generation_id": "gen-1",
        "key_id": "key_1",
        "cost_usd": "0.001",
        "usage": common_pb2.Usage(prompt_tokens=3, completion_tokens=4),
        "create_time": Timestamp(seconds=1_764_000_000),
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
    assert parse_entry({b"e": good.SerializeToString()}) == (good, "")
    assert parse_entry({b"x": b"1"}) == (None, "missing field e")
    assert parse_entry({b"e": b"\xff\xff"}) == (None, "not a serialized UsageEvent")
    bad = event(cost_usd="secret-looking-payload").SerializeToString()
    assert parse_entry({b"e": bad}) == (None, "invalid event.cost_usd")


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
