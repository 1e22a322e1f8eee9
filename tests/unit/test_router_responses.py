"""The relay's events as the public API's messages: what a streaming client and a whole-answer
client are told about refusals, log probabilities, reasoning blocks, metadata and choices."""

from __future__ import annotations

from decimal import Decimal

from google.protobuf import json_format

from switchboard.common.v1 import common_pb2
from switchboard_core.pricing import PriceSheet
from switchboard_router.canonical import (
    GEMINI_REASONING,
    Finish,
    FinishEvent,
    LogprobsDelta,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.responses import WholeCompletion, stream_message

ROUTE = Route(
    "p:x/y", "x/y", "p", 1, "http://h", "p", "m", PriceSheet.flat("1", "2"), 8192, 1024, frozenset()
)
TOKENS = (TokenLogprob("Hi", -0.25, (72, 105), (TopLogprob("Hi", -0.25), TopLogprob("Hey", -1.5))),)
BLOCK = ReasoningBlock(GEMINI_REASONING, "", "dGhvdWdodA==")
EVENTS: list[RelayEvent] = [
    Started("gen-1", ROUTE, 1_700_000_000.0, ("top_k",)),
    ReasoningDelta("thinking", format=GEMINI_REASONING),
    TextDelta("Hi", choice=0),
    LogprobsDelta(TOKENS),
    TextDelta("Yo", choice=1),
    RefusalDelta("I can't help with that.", choice=1),
    LogprobsDelta((TokenLogprob("I", -0.1),), choice=1, refusal=True),
    ToolCallDelta(0, "call_1", "lookup", '{"q"', signature="c2ln"),
    ToolCallDelta(0, arguments=': "x"}'),
    Completed(
        FinishEvent(Finish.TOOL_CALLS, "STOP"),
        UsageReport(10, 5),
        Decimal("0.00002"),
        {0: (BLOCK,)},
        {"grounding_metadata": {"webSearchQueries": ["q"]}, "score": 3},
        {
            0: FinishEvent(Finish.TOOL_CALLS, "STOP"),
            1: FinishEvent(Finish.CONTENT_FILTER, "refusal", 1),
        },
    ),
]


def test_a_whole_completion_carries_every_choice_and_what_the_provider_said() -> None:
    whole = WholeCompletion()
    for event in EVENTS:
        whole.add(event)
    reply = whole.result()
    assert (reply.text, reply.reasoning, reply.refusal) == ("Hi", "thinking", "")
    assert [(c.id, c.name, c.arguments_json, c.signature) for c in reply.tool_calls] == [
        ("call_1", "lookup", '{"q": "x"}', "c2ln")
    ]
    assert [(t.token, t.logprob, t.token_bytes) for t in reply.logprobs] == [("Hi", -0.25, b"Hi")]
    assert [(t.token, t.logprob) for t in reply.logprobs[0].top_logprobs] == [
        ("Hi", -0.25),
        ("Hey", -1.5),
    ]
    assert list(reply.reasoning_details) == [
        common_pb2.ReasoningDetail(format=GEMINI_REASONING, signature="dGhvdWdodA==")
    ]
    assert json_format.MessageToDict(reply.provider_metadata) == {
        "grounding_metadata": {"webSearchQueries": ["q"]},
        "score": 3.0,
    }
    assert [(c.index, c.text, c.refusal, c.finish_reason) for c in reply.choices] == [
        (0, "Hi", "", common_pb2.FINISH_REASON_TOOL_CALLS),
        (1, "Yo", "I can't help with that.", common_pb2.FINISH_REASON_CONTENT_FILTER),
    ]
    assert [t.token for t in reply.choices[1].refusal_logprobs] == ["I"]
    assert reply.ignored_parameters == ["top_k"]


def test_stream_messages_say_which_choice_each_piece_belongs_to() -> None:
    messages = [stream_message(e) for e in EVENTS]
    assert messages[0].start.generation_id == "gen-1"
    deltas = [m.delta for m in messages[1:-1]]
    assert deltas[0].reasoning == "thinking"
    assert (deltas[3].choice_index, deltas[3].text) == (1, "Yo")
    assert (deltas[4].choice_index, deltas[4].refusal) == (1, "I can't help with that.")
    assert [t.token for t in deltas[5].refusal_logprobs] == ["I"] and not deltas[5].logprobs
    assert deltas[6].tool_call.signature == "c2ln"
    end = messages[-1].end
    assert end.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert end.native_finish_reason == "STOP"
    assert [d.signature for d in end.reasoning_details] == ["dGhvdWdodA=="]
    assert [(c.index, c.native_finish_reason) for c in end.choices] == [(0, "STOP"), (1, "refusal")]
    assert (
        end.provider_metadata.fields["grounding_metadata"]
        .struct_value.fields["webSearchQueries"]
        .list_value.values[0]
        .string_value
        == "q"
    )


def test_without_n_there_is_no_choice_list() -> None:
    whole = WholeCompletion()
    for event in (
        EVENTS[0],
        TextDelta("x"),
        Completed(FinishEvent(Finish.STOP), UsageReport(1, 1), Decimal(0)),
    ):
        whole.add(event)
    reply = whole.result()
    assert reply.text == "x" and not reply.choices and not reply.HasField("provider_metadata")
