"""The fuzzer's strategies (tests/proto_strategies.py) draw every request type, and reach the
values they promise: type extremes, NaN, unknown enum numbers, extreme timestamps, NUL
characters, undecodable bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard.router.v1 import router_pb2
from tests.proto_strategies import edited, messages, mutated, random_bytes
from tests.rpc_methods import Rpc, all_rpcs

FAST = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
COMPLETION = router_pb2.StreamCompletionRequest.DESCRIPTOR


def drawn(descriptor: Any) -> st.SearchStrategy[Any]:
    """Messages of ``descriptor``, typed loosely: the checks below read their fields."""
    return messages(descriptor)


@pytest.mark.parametrize("rpc", all_rpcs(), ids=lambda rpc: rpc.path)
def test_every_request_type_is_drawn_and_survives_the_wire(rpc: Rpc) -> None:
    @FAST
    @given(messages(rpc.method.input_type))
    def round_trip(message: Message) -> None:
        assert type(message) is type(rpc.request())
        assert type(message).FromString(message.SerializeToString()) == message

    round_trip()


def test_numbers_reach_their_extremes() -> None:
    completion = drawn(COMPLETION)
    find(completion, lambda m: m.HasField("max_tokens") and m.max_tokens == 2**31 - 1)
    find(completion, lambda m: m.HasField("max_tokens") and m.max_tokens == -(2**31))
    find(completion, lambda m: m.HasField("seed") and m.seed == -(2**63))
    find(completion, lambda m: m.HasField("temperature") and math.isnan(m.temperature))
    find(completion, lambda m: m.HasField("top_p") and m.top_p == math.inf)
    find(completion, lambda m: any(x.role not in common_pb2.Role.values() for x in m.messages))
    event = drawn(metering_pb2.UsageEvent.DESCRIPTOR)
    find(event, lambda e: e.attempt == 2**32 - 1)


def test_timestamps_reach_year_1_and_past_9999_and_bad_nanos() -> None:
    query = drawn(metering_pb2.QueryUsageRequest.DESCRIPTOR)
    find(query, lambda m: m.start_time.seconds == -62_135_596_800)
    find(query, lambda m: m.end_time.seconds >= 253_402_300_800)
    find(query, lambda m: m.start_time.nanos < 0)


def test_strings_hold_nul_and_huge_text() -> None:
    key = drawn(metering_pb2.CreateApiKeyRequest.DESCRIPTOR)
    find(key, lambda m: "\x00" in m.name)
    find(key.map(lambda m: len(m.account_id)), lambda size: size >= 70_000)


def test_an_edited_template_is_sometimes_itself_and_sometimes_changed_deep_inside() -> None:
    template = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
    )
    near: st.SearchStrategy[Any] = edited(template)
    find(near, lambda m: m == template)
    find(near, lambda m: len(m.messages) == 1 and m.messages[0].content != "hi")
    find(near, lambda m: m.model == "switchboard/demo" and m.provider.max_price.ByteSize() > 0)


def _decodes(data: bytes) -> bool:
    try:
        router_pb2.StreamCompletionRequest.FromString(data)
    except DecodeError:
        return False
    return True


def test_broken_bytes_often_do_not_decode() -> None:
    serialized = messages(COMPLETION).map(lambda m: m.SerializeToString())
    find(mutated(serialized), lambda data: not _decodes(data))
    find(mutated(serialized), lambda data: len(data) > 0 and _decodes(data))
    find(random_bytes(), lambda data: not _decodes(data))


@FAST
@given(st.data())
def test_edits_never_break_the_message(data: st.DataObject) -> None:
    message = data.draw(edited(metering_pb2.RecordUsageRequest(events=[metering_pb2.UsageEvent()])))
    assert metering_pb2.RecordUsageRequest.FromString(message.SerializeToString()) == message
