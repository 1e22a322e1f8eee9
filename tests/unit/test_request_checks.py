"""The checks every server makes before a handler runs: NUL characters, and Timestamps and
Durations outside their range, each named by its field path."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.request_checks import request_violations
from tests.proto_strategies import TIMESTAMP_SECONDS

YEAR_1 = -62_135_596_800
YEAR_9999_END = 253_402_300_799


def fields(message: Message) -> list[str]:
    return [path for path, _ in request_violations(message)]


def test_nul_characters_are_named_by_path() -> None:
    request = router_pb2.StreamCompletionRequest(
        model="m\x00",
        messages=[
            common_pb2.ChatMessage(content="fine"),
            common_pb2.ChatMessage(parts=[common_pb2.ContentPart(text="a\x00")]),
        ],
        stop=["ok", "\x00"],
    )
    assert fields(request) == ["model", "messages[1].parts[0].text", "stop[1]"]


def test_timestamps_outside_years_1_to_9999_or_with_bad_nanos_are_named() -> None:
    """UpsertModel with ``update_time {nanos: -1}`` was written to the catalog, and then its
    audit event could not be built (proto JSON refuses such a Timestamp): a change made and
    not recorded (found by tests/e2e/test_fuzz.py)."""
    request = catalog_pb2.UpsertModelRequest(model=catalog_pb2.Model(id="a/b"))
    request.model.update_time.nanos = -1
    assert fields(request) == ["model.update_time"]
    for seconds, nanos in ((YEAR_1 - 1, 0), (YEAR_9999_END + 1, 0), (0, 1_000_000_000)):
        query = metering_pb2.QueryUsageRequest(
            start_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        )
        assert fields(query) == ["start_time"]


def test_every_timestamp_in_range_passes() -> None:
    for seconds in (YEAR_1, YEAR_9999_END, 0, *TIMESTAMP_SECONDS[8:]):
        request = metering_pb2.CreateApiKeyRequest(
            expire_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=999_999_999)
        )
        assert fields(request) == []


def test_durations_outside_their_range_are_named() -> None:
    good = (duration_pb2.Duration(seconds=-5, nanos=-1), duration_pb2.Duration(seconds=1, nanos=1))
    assert all(request_violations(d) == [] for d in good)
    for bad in (
        duration_pb2.Duration(seconds=315_576_000_001),
        duration_pb2.Duration(seconds=1, nanos=-1),
        duration_pb2.Duration(nanos=1_000_000_000),
    ):
        assert fields(bad) == [""]
