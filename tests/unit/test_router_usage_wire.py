"""The metering wire format the router writes (:mod:`switchboard_router.usage_sink`): every
canonical finish reason has its proto number, every status a metric name, and a generation's
usage event carries each field it is given, byte for byte."""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal

import pytest

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CompletionRequest,
    Finish,
    FinishEvent,
    ImagePart,
    Message,
    Role,
    TextPart,
    UsageReport,
)
from switchboard_router.generation import Generation
from switchboard_router.testing import scripted_route
from switchboard_router.usage_sink import (
    STATUS_NAMES,
    finish_reason,
    timestamp,
    usage_event,
    usage_message,
)


@pytest.mark.parametrize("reason", list(Finish))
def test_each_finish_reason_is_the_proto_reason_of_its_name_and_number(reason: Finish) -> None:
    proto = finish_reason(reason)
    assert proto == int(reason)  # what the events carried before the table: the same bytes
    assert common_pb2.FinishReason.Name(proto) == f"FINISH_REASON_{reason.name}"


def test_each_final_status_has_a_metric_name() -> None:
    assert STATUS_NAMES == {
        metering_pb2.GENERATION_STATUS_COMPLETED: "completed",
        metering_pb2.GENERATION_STATUS_CANCELLED: "cancelled",
        metering_pb2.GENERATION_STATUS_FAILED: "failed",
    }


def test_a_timestamp_is_the_wall_clock_time_to_a_microsecond() -> None:
    stamp = timestamp(1_700_000_000.25)
    # seconds x 1e9 in a double: within a microsecond, as every event so far was stamped.
    assert stamp.seconds == 1_700_000_000
    assert abs(stamp.nanos - 250_000_000) < 1_000


# The router's own test endpoint (model x/y at $1/$2 per million tokens), named as a catalog
# would version it.
ROUTE = replace(scripted_route("p"), upstream_model="m-2026", price_version=9)


def test_the_usage_event_carries_every_field_of_the_generation() -> None:
    picture = Message(Role.USER, (TextPart("what is this?"), ImagePart(url="https://x/a.png")))
    now = time.monotonic()
    generation = Generation(
        id="gen-7",
        attempt=2,
        caller=Caller("key_1", "acct_1"),
        request=CompletionRequest(model="x/y", messages=(picture,)),
        route=ROUTE,
        started=now - 2.0,
        create_time=1_700_000_000.5,
        streamed=True,
        first_event_at=now - 1.5,
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    usage = UsageReport(40, 8, cached_tokens=4, estimated=True)
    event = usage_event(
        generation,
        metering_pb2.GENERATION_STATUS_CANCELLED,
        usage,
        Decimal("0.000056"),
        FinishEvent(Finish.CANCELLED, "client_gone"),
    )
    assert 2_000 <= event.latency_ms < 2_500  # from the request's arrival to now
    expected = metering_pb2.UsageEvent(
        generation_id="gen-7",
        attempt=2,
        key_id="key_1",
        account_id="acct_1",
        model_id="x/y",
        provider_id="p",
        endpoint_id="p:x/y",
        upstream_model="m-2026",
        usage=common_pb2.Usage(
            prompt_tokens=40, completion_tokens=8, cached_tokens=4, estimated=True, input_images=1
        ),
        cost_usd="0.000056",
        finish_reason=common_pb2.FINISH_REASON_CANCELLED,
        native_finish_reason="client_gone",
        status=metering_pb2.GENERATION_STATUS_CANCELLED,
        create_time=timestamp(1_700_000_000.5),
        latency_ms=event.latency_ms,
        time_to_first_token_ms=500,
        streamed=True,
        price_version=9,
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert event.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    assert event.usage == usage_message(usage, images=1)


def test_no_first_event_means_no_time_to_first_token() -> None:
    generation = Generation(
        id="gen-8",
        attempt=0,
        caller=Caller("key_1", "acct_1"),
        request=CompletionRequest(model="x/y", messages=(Message.of(Role.USER, "hi"),)),
        route=ROUTE,
        started=time.monotonic(),
        create_time=time.time(),
        streamed=False,
    )
    event = usage_event(
        generation,
        metering_pb2.GENERATION_STATUS_FAILED,
        UsageReport(0, 0),
        Decimal(0),
        FinishEvent(Finish.ERROR),
    )
    assert event.time_to_first_token_ms == 0 and not event.streamed
    assert event.finish_reason == common_pb2.FINISH_REASON_ERROR and event.cost_usd == "0"
