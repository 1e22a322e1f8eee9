"""Anthropic request bodies with reasoning, and stream cases no recorded stream shows."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from switchboard_core.config import Secret
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    CACHE_1H,
    CACHE_5M,
    GEMINI_REASONING,
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    ImagePart,
    Message,
    ProviderMetadata,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningEffort,
    Role,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    UsageReport,
)
from switchboard_router.providers import anthropic_messages
from switchboard_router.providers.anthropic_body import build_body
from switchboard_router.providers.anthropic_stream import StreamState, message_events
from switchboard_router.providers.base import Target, UpstreamProtocolError, UpstreamRateLimited
from switchboard_router.providers.sse import SseEvent

TARGET = Target("anthropic", "http://host.invalid/v1", "claude-x", Secret("k"))
HELLO = CompletionRequest(model="a/b", messages=(Message.of(Role.USER, "hi"),), max_tokens=10_000)
WEATHER = Tool("get_weather", "Weather", {"type": "object"})


def body(**changes: Any) -> dict[str, Any]:
    target = changes.pop("target", TARGET)
    return build_body(dataclasses.replace(HELLO, **changes), target)


@pytest.mark.parametrize(
    ("effort", "budget"),
    [
        (ReasoningEffort.MINIMAL, 1024),  # 10% of 10000 is 1000: raised to Anthropic's minimum
        (ReasoningEffort.LOW, 2000),
        (ReasoningEffort.MEDIUM, 5000),
        (ReasoningEffort.HIGH, 8000),
        (None, 5000),  # enabled with neither effort nor budget: medium
    ],
)
def test_an_effort_is_a_share_of_max_tokens_as_openrouter_maps_it(
    effort: ReasoningEffort | None, budget: int
) -> None:
    sent = body(reasoning=ReasoningConfig(effort=effort))
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == 10_000


def test_a_budget_at_or_above_max_tokens_raises_max_tokens_by_the_budget() -> None:
    sent = body(max_tokens=1000, reasoning=ReasoningConfig(max_tokens=3000))
    assert sent["thinking"]["budget_tokens"] == 3000
    assert sent["max_tokens"] == 4000  # the answer keeps the 1000 the client asked for
    small = body(max_tokens=500, reasoning=ReasoningConfig(effort=ReasoningEffort.LOW))
    assert small["thinking"]["budget_tokens"] == 1024 and small["max_tokens"] == 1524


def test_a_raised_max_tokens_stays_within_the_endpoints_output_cap() -> None:
    capped = Target("anthropic", "http://h/v1", "m", Secret("k"), max_completion_tokens=2000)
    sent = body(max_tokens=1000, reasoning=ReasoningConfig(max_tokens=4000), target=capped)
    assert sent["max_tokens"] == 2000
    assert sent["thinking"]["budget_tokens"] == 1999
    huge = body(reasoning=ReasoningConfig(max_tokens=500_000), max_tokens=200_000)
    assert huge["thinking"]["budget_tokens"] == 128_000  # OpenRouter's ceiling


@pytest.mark.parametrize(
    "reasoning",
    [None, ReasoningConfig(enabled=False), ReasoningConfig(effort=ReasoningEffort.NONE)],
)
def test_no_reasoning_asked_means_no_thinking(reasoning: ReasoningConfig | None) -> None:
    sent = body(reasoning=reasoning, temperature=0.2, top_k=5)
    assert "thinking" not in sent
    assert (sent["temperature"], sent["top_k"]) == (0.2, 5)


def test_thinking_drops_the_sampling_settings_anthropic_refuses_with_it() -> None:
    thinking = ReasoningConfig(effort=ReasoningEffort.LOW)
    sent = body(reasoning=thinking, temperature=0.2, top_k=40, top_p=0.5)
    assert "temperature" not in sent and "top_k" not in sent
    assert sent["top_p"] == 0.95  # clamped into [0.95, 1]
    kept = body(reasoning=thinking, temperature=1.0, top_p=0.99)
    assert (kept["temperature"], kept["top_p"]) == (1.0, 0.99)


@pytest.mark.parametrize(
    ("choice", "thinks"),
    [
        (ToolChoice(ToolChoiceMode.REQUIRED), False),
        (ToolChoice(ToolChoiceMode.TOOL, "get_weather"), False),
        (ToolChoice(ToolChoiceMode.AUTO), True),
        (ToolChoice(ToolChoiceMode.NONE), True),
    ],
)
def test_a_forced_tool_choice_wins_over_thinking(choice: ToolChoice, thinks: bool) -> None:
    sent = body(tools=(WEATHER,), tool_choice=choice, reasoning=ReasoningConfig(), temperature=0.3)
    assert ("thinking" in sent) is thinks
    assert ("temperature" in sent) is not thinks


SIGNED = ReasoningBlock(ANTHROPIC_REASONING, "Oslo: call the tool.", signature="sig-1")
REDACTED = ReasoningBlock(ANTHROPIC_REASONING, redacted="opaque==")
UNSIGNED = ReasoningBlock(ANTHROPIC_REASONING, "cut off before its signature")
FOREIGN = ReasoningBlock(GEMINI_REASONING, "a Gemini thought", signature="g-sig")


def tool_turn(*reasoning: ReasoningBlock) -> tuple[Message, ...]:
    return (
        Message.of(Role.USER, "Weather in Oslo?"),
        Message(
            Role.ASSISTANT,
            (TextPart("Checking."),),
            tool_calls=(ToolCall("toolu_1", "get_weather", '{"city": "Oslo"}'),),
            reasoning=reasoning,
        ),
        Message.of(Role.TOOL, '{"temp_c": 4}', tool_call_id="toolu_1"),
    )


def test_reasoning_blocks_go_back_first_in_their_assistant_turn_in_order() -> None:
    sent = body(
        messages=tool_turn(REDACTED, FOREIGN, SIGNED, UNSIGNED),
        tools=(WEATHER,),
        reasoning=ReasoningConfig(effort=ReasoningEffort.LOW),
    )
    assistant = sent["messages"][1]
    assert assistant["content"] == [
        {"type": "redacted_thinking", "data": "opaque=="},
        {"type": "thinking", "thinking": "Oslo: call the tool.", "signature": "sig-1"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert sent["thinking"]["type"] == "enabled"
    # Without reasoning asked for, the blocks still go back (Anthropic ignores them then).
    plain = body(messages=tool_turn(SIGNED), tools=(WEATHER,))
    assert plain["messages"][1]["content"][0]["type"] == "thinking"
    assert "thinking" not in plain


@pytest.mark.parametrize("blocks", [(), (FOREIGN,), (UNSIGNED,)])
def test_a_tool_turn_without_a_signed_block_continues_without_thinking(
    blocks: tuple[ReasoningBlock, ...],
) -> None:
    sent = body(messages=tool_turn(*blocks), tools=(WEATHER,), reasoning=ReasoningConfig())
    assert "thinking" not in sent  # Anthropic would refuse the turn with thinking on
    # A new question after the tool turn is not a continuation: thinking is on again.
    follow_up = (
        *tool_turn(*blocks),
        Message.of(Role.ASSISTANT, "4°C."),
        Message.of(Role.USER, "And Bergen?"),
    )
    assert "thinking" in body(messages=follow_up, tools=(WEATHER,), reasoning=ReasoningConfig())


def test_tool_call_arguments_that_are_no_object_go_as_an_empty_input() -> None:
    for arguments in ("", "[1, 2]", "not json"):
        turn = Message(Role.ASSISTANT, (), tool_calls=(ToolCall("t", "f", arguments),))
        sent = body(messages=(Message.of(Role.USER, "go"), turn))
        assert sent["messages"][1]["content"] == [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}
        ]


def test_reasoning_is_a_parameter_the_adapter_translates() -> None:
    assert "reasoning" in anthropic_messages.PARAMETERS
    for ignored in ("n", "logprobs", "top_logprobs", "seed", "response_format"):
        assert ignored not in anthropic_messages.PARAMETERS


# --- stream cases -------------------------------------------------------------------------


def run(*events: dict[str, Any]) -> list[AdapterEvent]:
    state = StreamState("anthropic")
    out = state.feed([SseEvent(str(e["type"]), orjson.dumps(e).decode()) for e in events])
    assert state.stopped and state.error is None
    return out + state.final()


START = {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 5}}}
STOP = {"type": "message_stop"}


def delta(usage: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "message_delta", "delta": fields}
    if usage is not None:
        event["usage"] = usage
    return event


def test_a_final_output_count_of_zero_replaces_the_running_one() -> None:
    out = run(START, delta({"output_tokens": 0}, stop_reason="end_turn"), STOP)
    assert UsageReport(9, 0) in out


def test_a_stream_that_reports_no_usage_gives_no_usage_report() -> None:
    out = run({"type": "message_start", "message": {}}, delta(stop_reason="end_turn"), STOP)
    assert out == [FinishEvent(Finish.STOP, "end_turn")]


@pytest.mark.parametrize(
    ("native", "finish"),
    [
        ("stop_sequence", Finish.STOP),
        ("pause_turn", Finish.STOP),
        ("model_context_window_exceeded", Finish.LENGTH),
        ("refusal", Finish.CONTENT_FILTER),
        ("a_reason_from_the_future", Finish.STOP),
    ],
)
def test_native_stop_reasons_are_kept(native: str, finish: Finish) -> None:
    out = run(START, delta(stop_reason=native), STOP)
    assert out[-1] == FinishEvent(finish, native)


def test_the_matched_stop_sequence_is_reported() -> None:
    out = run(
        START, delta({"output_tokens": 3}, stop_reason="stop_sequence", stop_sequence="END"), STOP
    )
    assert ProviderMetadata({"stop_sequence": "END"}) in out


def test_a_whole_body_that_is_an_error_raises_it_and_garbage_is_a_protocol_error() -> None:
    error = orjson.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    )
    with pytest.raises(UpstreamRateLimited, match="slow"):
        message_events(error, "anthropic")
    with pytest.raises(UpstreamProtocolError):
        message_events(b"<html>", "anthropic")


def test_a_tool_block_the_stream_never_stops_still_gets_its_arguments() -> None:
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
    }
    out = run(START, start, delta(stop_reason="max_tokens"), STOP)
    assert ToolCallDelta(0, arguments="{}") in out


def test_cache_marks_become_cache_control_on_the_blocks_that_end_each_prefix() -> None:
    image = ImagePart(data=b"\x89PNG", mime_type="image/png", cache=CACHE_5M)
    sent = body(
        messages=(
            Message(Role.SYSTEM, (TextPart("rules", CACHE_1H), TextPart("today"))),
            Message(Role.USER, (TextPart("document", CACHE_5M), image, TextPart("question"))),
            Message(Role.ASSISTANT, (), tool_calls=(ToolCall("t1", "f", "{}"),)),
            Message(Role.TOOL, (TextPart("result", CACHE_5M),), tool_call_id="t1"),
        )
    )
    assert sent["system"] == [  # blocks, so the mark has one to sit on
        {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "today"},
    ]
    user = sent["messages"][0]["content"]
    assert user[0] == {"type": "text", "text": "document", "cache_control": {"type": "ephemeral"}}
    assert user[1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in user[2]
    result = sent["messages"][2]["content"][0]
    assert (result["type"], result["cache_control"]) == ("tool_result", {"type": "ephemeral"})
    unmarked = body(
        messages=(Message.of(Role.SYSTEM, "a"), Message.of(Role.SYSTEM, "b"), *HELLO.messages)
    )
    assert unmarked["system"] == "a\n\nb"  # no mark: one string, as before
