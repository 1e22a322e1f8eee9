"""The Anthropic Messages shape of the HTTP edge: request JSON as a router request (checked by
the router's own rules, problems named by their JSON paths), and the relay's events as
Anthropic's SSE events and message, read back with the official anthropic SDK's own types and
stream accumulator."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_core.pricing import PriceSheet
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    CACHE_1H,
    Finish,
    FinishEvent,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    Role,
    TextDelta,
    ToolCallDelta,
    ToolChoiceMode,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.edge.anthropic_reply import (
    StreamReply,
    WholeReply,
    error_json,
    sse_bytes,
    stop_of,
    usage_json,
)
from switchboard_router.edge.anthropic_request import translate
from switchboard_router.edge.door import checked
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.requests import parse_request

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
BASE: dict[str, Any] = {
    "model": "anthropic/claude-haiku-4.5",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "hi"}],
}


def ask(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def problems(body: dict[str, Any]) -> dict[str, str]:
    """The problems the edge names for ``body``: its own shape checks, then the router's."""
    try:
        translated = translate(body)
        try:
            parse_request(checked(translated.request))
        except InvalidArgument as error:
            raise translated.origins.renamed(error) from None
    except InvalidArgument as error:
        return dict(error.violations)
    return {}


def test_a_full_request_becomes_the_router_request_the_grpc_port_takes() -> None:
    body = ask(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "look it up", "signature": "c2ln"},
                    {"type": "redacted_thinking", "data": "b3BhcXVl"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                    {"type": "text", "text": "And so?"},
                ],
            },
        ],
        tools=[{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 2048},
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        stream=True,
    )
    translated = translate(body)
    assert translated.stream is True
    parsed = parse_request(checked(translated.request))
    roles = [m.role for m in parsed.messages]
    assert roles == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL, Role.USER]
    system, user, assistant, tool, last = parsed.messages
    assert system.text == "Be brief." and system.parts[0].cache == "5m"
    assert user.parts[1].inline() == ("image/png", b"\x89PNG\r\n\x1a\n fake")  # type: ignore[union-attr]
    assert user.parts[2].url == "https://example.com/a.jpg"  # type: ignore[union-attr]
    assert [(b.text, b.signature, b.redacted) for b in assistant.reasoning] == [
        ("look it up", "c2ln", ""),
        ("", "", "b3BhcXVl"),
    ]
    assert {b.format for b in assistant.reasoning} == {ANTHROPIC_REASONING}
    call = assistant.tool_calls[0]
    assert (call.id, call.name, orjson.loads(call.arguments)) == ("toolu_1", "lookup", {"q": "x"})
    assert (tool.tool_call_id, tool.text, last.text) == ("toolu_1", "42", "And so?")
    assert parsed.tools[0].name == "lookup" and parsed.tool_choice is not None
    assert parsed.tool_choice.mode == ToolChoiceMode.REQUIRED
    assert parsed.parallel_tool_calls is False
    assert parsed.reasoning is not None and parsed.reasoning.max_tokens == 2048
    assert (parsed.max_tokens, parsed.temperature, parsed.top_p, parsed.top_k) == (
        256,
        0.5,
        0.9,
        40,
    )
    assert (parsed.stop, parsed.user) == (("END",), "user-7")


def test_thinking_and_output_config_map_to_the_reasoning_settings() -> None:
    off = translate(ask(thinking={"type": "disabled"}, output_config={"effort": "high"})).request
    assert off.reasoning.enabled is False and off.reasoning.effort == 0
    adaptive = translate(ask(thinking={"type": "adaptive", "display": "omitted"})).request
    assert adaptive.HasField("reasoning") and adaptive.reasoning.exclude
    effort = translate(ask(output_config={"effort": "max"})).request
    assert effort.reasoning.effort == router_pb2.Reasoning.EFFORT_HIGH
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = translate(
        ask(output_config={"format": {"type": "json_schema", "schema": schema}})
    ).request
    assert orjson.loads(fmt.response_format.schema_json) == schema
    assert fmt.response_format.type == router_pb2.ResponseFormat.TYPE_JSON_SCHEMA


def test_top_level_cache_control_marks_the_last_block_of_the_prompt() -> None:
    marked = translate(ask(cache_control={"type": "ephemeral", "ttl": "1h"})).request
    part = marked.messages[-1].parts[-1]
    assert part.text == "hi" and part.cache_control.ttl == common_pb2.CacheControl.TTL_1H
    assert parse_request(marked).messages[-1].parts[-1].cache == CACHE_1H


def test_an_empty_tool_result_is_an_empty_text_the_router_takes() -> None:
    body = ask(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ]
    )
    parsed = parse_request(translate(body).request)
    assert parsed.messages[-1].role == Role.TOOL and parsed.messages[-1].text == ""


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"max_tokens": None}, "max_tokens", "required"),
        ({"max_tokens": 2**40}, "max_tokens", "integer"),
        ({"max_tokens": 1e30}, "max_tokens", "integer"),
        ({"max_tokens": True}, "max_tokens", "integer"),
        ({"max_tokens": 0}, "max_tokens", "integer"),
        ({"model": 7}, "model", "required"),
        ({"model": "no model"}, "model", "model id"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"temperature": 1e308}, "temperature", "between 0 and 2"),
        ({"top_k": -1}, "top_k", "integer"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"messages": []}, "messages", "at least one"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role", "'user'"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content", "required"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "at least one"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences", "at most 4"),
        ({"stop_sequences": ["a", ""]}, "stop_sequences[1]", "empty"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens", "integer"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2_000_000}},
            "thinking.budget_tokens",
            "1000000",
        ),
        ({"thinking": {"type": "sometimes"}}, "thinking.type", "'enabled'"),
        ({"metadata": {"user_id": "u" * 600}}, "metadata.user_id", "at most"),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools[0].type",
            "custom",
        ),
        ({"tools": [{"name": "bad name", "input_schema": {}}]}, "tools[0].name", "letters"),
        ({"tools": [{"name": "f", "input_schema": "x"}]}, "tools[0].input_schema", "JSON Schema"),
        ({"tool_choice": {"type": "any"}}, "tool_choice", "requires tools"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type", "'auto'"),
        ({"container": "c1"}, "container", "not supported"),
        ({"cache_control": {"type": "persistent"}}, "cache_control", "ephemeral"),
        ({"output_config": {"effort": "huge"}}, "output_config.effort", "one of"),
        ({"messages": [{"role": "user", "content": "x"}] * 2049}, "messages", "at most 2048"),
        ({"tools": [{"name": "f", "input_schema": {}}] * 129}, "tools", "at most 128"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 4097}]},
            "messages[0].content",
            "at most 4096",
        ),
        ({"system": [{"type": "text", "text": "x"}] * 4097}, "system", "at most 4096"),
    ],
)
def test_each_problem_is_named_by_its_json_path(
    fields: dict[str, Any], field: str, says: str
) -> None:
    body = {k: v for k, v in ask(**fields).items() if v is not None}
    found = problems(body)
    assert field in found, found
    assert says in found[field]


def content(*blocks: dict[str, Any], role: str = "user") -> dict[str, Any]:
    return ask(system="be kind", messages=[{"role": role, "content": list(blocks)}])


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (content({"type": "document", "source": {}}), "messages[0].content[0].type", "'document'"),
        (
            content(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "@@"},
                }
            ),
            "messages[0].content[0].source.data",
            "base64",
        ),
        (
            content(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/tiff", "data": PNG},
                }
            ),
            "messages[0].content[0].source.media_type",
            "image/png",
        ),
        (
            content({"type": "image", "source": {"type": "url", "url": "ftp://x"}}),
            "messages[0].content[0].source.url",
            "http",
        ),
        (
            content({"type": "image", "source": {"type": "file", "file_id": "f"}}),
            "messages[0].content[0].source.type",
            "'base64'",
        ),
        (
            content(
                {"type": "text", "text": "a"},
                {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}},
            ),
            "messages[0].content[1].cache_control",
            "empty",
        ),
        (content({"type": "text", "text": "x\x00y"}), "messages[0].content[0].text", "NUL"),
        (
            content({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}),
            "messages[0].content[0].content[0].type",
            "'image'",
        ),
        (
            content(
                {"type": "tool_use", "id": "t", "name": "bad name", "input": {}}, role="assistant"
            ),
            "messages[0].content[0].name",
            "letters",
        ),
        (
            content({"type": "tool_use", "id": "t", "name": "f", "input": [1]}, role="assistant"),
            "messages[0].content[0].input",
            "object",
        ),
        (
            content(
                {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                role="assistant",
            ),
            "messages[0].content[0].type",
            "'image'",
        ),
    ],
)
def test_content_problems_are_named_by_their_block(
    body: dict[str, Any], field: str, says: str
) -> None:
    found = problems(body)
    assert field in found, found
    assert says in found[field]


def test_a_system_message_with_nul_is_named_as_system() -> None:
    assert "NUL" in problems(ask(system="a\x00b"))["system.content"]


def test_problems_are_all_reported_together() -> None:
    found = problems(ask(max_tokens="many", temperature="hot", tools="none", speed="fast"))
    assert {"max_tokens", "temperature", "tools"} <= found.keys()
    assert "speed" not in found  # accepted and ignored


ROUTE = Route(
    "anthropic:claude",
    "anthropic/claude-haiku-4.5",
    "anthropic",
    2,
    "http://h",
    "anthropic",
    "claude",
    PriceSheet.flat("1", "2"),
    8192,
    1024,
    frozenset(),
)
USAGE = UsageReport(
    2000,
    40,
    cached_tokens=1500,
    cache_write_tokens=300,
    cache_write_1h_tokens=100,
    reasoning_tokens=7,
)
SIGNED = ReasoningBlock(ANTHROPIC_REASONING, "hmm, then", "c2lnbmVk")
EVENTS: list[RelayEvent] = [
    Started("gen-1", ROUTE, 1_700_000_000.5),
    ReasoningDelta("hmm, ", format=ANTHROPIC_REASONING, block=0),
    ReasoningDelta("then", format=ANTHROPIC_REASONING, block=0),
    TextDelta("Let me "),
    TextDelta("look."),
    ToolCallDelta(0, "toolu_1", "lookup", '{"q"'),
    ToolCallDelta(0, arguments=': "x"}'),
    ToolCallDelta(1, "", "other"),
    Completed(FinishEvent(Finish.TOOL_CALLS, "tool_use"), USAGE, Decimal("0.0012"), {0: (SIGNED,)}),
]


def stream_of(events: list[RelayEvent]) -> list[tuple[str, dict[str, Any]]]:
    reply = StreamReply()
    out = [e for event in events for e in reply.events(event)]
    raw = sse_bytes(out).decode()  # the bytes are "event: <name>\ndata: <json>\n\n" each
    assert raw.count("\n\n") == len(out) and raw.startswith("event: message_start\ndata: {")
    return out


def test_a_stream_is_the_events_anthropic_sends_and_the_sdk_accumulates() -> None:
    out = stream_of(EVENTS)
    assert [name for name, _ in out] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(data["type"] == name for name, data in out)
    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in out:
        if name == "ping":  # the SDK skips pings before decoding events
            continue
        event = adapter.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    assert (snapshot.id, snapshot.model, snapshot.stop_reason) == (
        "gen-1",
        ROUTE.model_id,
        "tool_use",
    )
    thinking, text, call, other = snapshot.content
    assert thinking.type == "thinking" and thinking.thinking == "hmm, then"
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and (call.id, call.name, call.input) == (
        "toolu_1",
        "lookup",
        {"q": "x"},
    )
    assert other.type == "tool_use" and other.id == "toolu_gen-1_1" and other.input == {}
    usage = snapshot.usage
    assert (usage.input_tokens, usage.output_tokens) == (200, 40)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (1500, 300)


def test_a_signature_and_redacted_reasoning_are_streamed_when_the_relay_passes_them() -> None:
    out = stream_of(
        [
            EVENTS[0],
            ReasoningDelta("", format=ANTHROPIC_REASONING, block=0, redacted="b3BhcXVl"),
            ReasoningDelta("why", format=ANTHROPIC_REASONING, block=1, signature="c2ln"),
            ReasoningDelta("", format=ANTHROPIC_REASONING, block=2, signature="b25seQ=="),
            TextDelta("ok"),
            Completed(FinishEvent(Finish.STOP, "end_turn"), USAGE, Decimal(0)),
        ]
    )
    starts = [d["content_block"] for n, d in out if n == "content_block_start"]
    assert starts[0] == {"type": "redacted_thinking", "data": "b3BhcXVl"}
    deltas = [d["delta"] for n, d in out if n == "content_block_delta"]
    assert deltas[:3] == [
        {"type": "thinking_delta", "thinking": "why"},
        {"type": "signature_delta", "signature": "c2ln"},
        {"type": "signature_delta", "signature": "b25seQ=="},  # its text was not relayed
    ]
    assert starts[1:3] == [{"type": "thinking", "thinking": "", "signature": ""}] * 2


def test_a_whole_message_has_signed_thinking_first_and_validates_as_the_sdks_message() -> None:
    reply = WholeReply()
    for event in EVENTS:
        reply.add(event)
    message = Message.model_validate(reply.result())
    assert (message.id, message.model, message.stop_reason) == ("gen-1", ROUTE.model_id, "tool_use")
    thinking, text, call, other = message.content
    assert thinking.type == "thinking" and (thinking.thinking, thinking.signature) == (
        "hmm, then",
        "c2lnbmVk",
    )
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and call.input == {"q": "x"}
    assert other.type == "tool_use" and other.input == {}
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == 7
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 100


def test_unsigned_reasoning_and_a_refusal_make_a_thinking_and_a_text_block() -> None:
    reply = WholeReply()
    for event in [
        EVENTS[0],
        ReasoningDelta("plain thoughts"),
        RefusalDelta("I can't help with that."),
        Completed(FinishEvent(Finish.CONTENT_FILTER, "content_filter"), USAGE, Decimal(0)),
    ]:
        reply.add(event)
    message = Message.model_validate(reply.result())
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.stop_reason == "refusal"


@pytest.mark.parametrize(
    ("finish", "metadata", "expected"),
    [
        (FinishEvent(Finish.STOP, "end_turn"), None, ("end_turn", None)),
        (
            FinishEvent(Finish.STOP, "stop_sequence"),
            {"stop_sequence": "END"},
            ("stop_sequence", "END"),
        ),
        (FinishEvent(Finish.STOP, "pause_turn"), None, ("pause_turn", None)),
        (
            FinishEvent(Finish.LENGTH, "model_context_window_exceeded"),
            None,
            ("model_context_window_exceeded", None),
        ),
        (FinishEvent(Finish.STOP, "stop"), None, ("end_turn", None)),
        (FinishEvent(Finish.LENGTH, "length"), None, ("max_tokens", None)),
        (FinishEvent(Finish.TOOL_CALLS, "STOP"), None, ("tool_use", None)),
        (FinishEvent(Finish.TOOL_CALLS, "end_turn"), None, ("tool_use", None)),
        (FinishEvent(Finish.CONTENT_FILTER, "SAFETY"), None, ("refusal", None)),
        (FinishEvent(Finish.ERROR, ""), None, ("end_turn", None)),
    ],
)
def test_stop_reasons_are_anthropics_own_or_mapped_from_the_canonical_finish(
    finish: FinishEvent, metadata: dict[str, Any] | None, expected: tuple[str, str | None]
) -> None:
    assert stop_of(Completed(finish, USAGE, Decimal(0), {}, metadata)) == expected


def test_usage_is_split_as_anthropic_counts_it() -> None:
    assert usage_json(UsageReport(10, 5)) == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    }
    assert usage_json(UsageReport(10, 5, web_searches=2))["server_tool_use"] == {
        "web_search_requests": 2
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (499, "invalid_request_error"),
        (500, "api_error"),
        (501, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_errors_are_anthropics_error_json_with_its_type_for_the_status(
    status: int, kind: str
) -> None:
    assert error_json(status, "why", "req-1") == {
        "type": "error",
        "error": {"type": kind, "message": "why"},
        "request_id": "req-1",
    }
