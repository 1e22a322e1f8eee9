"""Gemini request bodies (thinking, signatures sent back, logprobs, candidates), error bodies
and stream edge cases, without a network."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from switchboard_core.config import Secret
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    CACHE_1H,
    CACHE_5M,
    GEMINI_REASONING,
    CompletionRequest,
    Finish,
    FinishEvent,
    LogprobsDelta,
    Message,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningDelta,
    ReasoningEffort,
    Role,
    TextDelta,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from switchboard_router.providers import gemini
from switchboard_router.providers.base import (
    Target,
    UpstreamBadRequest,
    UpstreamCredentialRejected,
    UpstreamUnavailable,
)
from switchboard_router.providers.gemini_errors import error_from_body
from switchboard_router.providers.gemini_stream import StreamState
from switchboard_router.providers.sse import SseEvent

HI = (Message.of(Role.USER, "hi"),)


def body_for(model: str, **fields: Any) -> dict[str, Any]:
    request = CompletionRequest(model="x/y", messages=fields.pop("messages", HI), **fields)
    target = Target("google", "https://g.example/v1beta", model, Secret("k"))
    return gemini.build_body(request, target)


def thinking(model: str, **fields: Any) -> Any:
    return body_for(model, **fields)["generationConfig"].get("thinkingConfig")


@pytest.mark.parametrize(
    ("model", "reasoning", "max_tokens", "expected"),
    [
        # Gemini 3: levels; Flash has four, Pro two; thinking never off.
        (
            "gemini-3-pro-preview",
            ReasoningConfig(effort=ReasoningEffort.MEDIUM),
            None,
            {"thinkingLevel": "high", "includeThoughts": True},
        ),
        (
            "gemini-3-flash-preview",
            ReasoningConfig(effort=ReasoningEffort.MEDIUM),
            None,
            {"thinkingLevel": "medium", "includeThoughts": True},
        ),
        (
            "gemini-3-flash-preview",
            ReasoningConfig(enabled=False),
            None,
            {"thinkingLevel": "minimal"},
        ),
        (
            "gemini-3.1-pro-preview",
            ReasoningConfig(effort=ReasoningEffort.NONE),
            None,
            {"thinkingLevel": "low"},
        ),
        (
            "gemini-3-pro-preview",
            ReasoningConfig(max_tokens=4096, exclude=True),
            None,
            {"thinkingBudget": 4096},
        ),
        # Gemini 2.5: budgets clamped to the tier; 0 only where the tier allows it.
        ("gemini-2.5-flash", ReasoningConfig(enabled=False), None, {"thinkingBudget": 0}),
        ("gemini-2.5-pro", ReasoningConfig(enabled=False), None, {"thinkingBudget": 128}),
        (
            "gemini-2.5-flash-lite",
            ReasoningConfig(max_tokens=100),
            None,
            {"thinkingBudget": 512, "includeThoughts": True},
        ),
        (
            "gemini-2.5-pro",
            ReasoningConfig(effort=ReasoningEffort.HIGH),
            None,
            {"thinkingBudget": 26214, "includeThoughts": True},
        ),
        (
            "gemini-2.5-flash",
            ReasoningConfig(effort=ReasoningEffort.LOW),
            8000,
            {"thinkingBudget": 1600, "includeThoughts": True},
        ),
        ("gemini-2.5-flash", ReasoningConfig(exclude=True), None, None),
        ("gemini-2.5-flash", ReasoningConfig(), None, {"includeThoughts": True}),
        # Models that do not think get no thinkingConfig at all.
        ("gemini-2.0-flash", ReasoningConfig(effort=ReasoningEffort.HIGH), None, None),
        ("gemma-3-27b-it", ReasoningConfig(effort=ReasoningEffort.HIGH), None, None),
    ],
)
def test_reasoning_becomes_the_models_thinking_config(
    model: str, reasoning: ReasoningConfig, max_tokens: int | None, expected: Any
) -> None:
    assert thinking(model, reasoning=reasoning, max_tokens=max_tokens) == expected


def test_no_reasoning_parameter_sends_no_thinking_config() -> None:
    assert thinking("gemini-2.5-pro") is None


def test_logprobs_and_candidates_go_in_the_generation_config() -> None:
    config = body_for("gemini-2.5-flash", logprobs=True, top_logprobs=50, n=2)["generationConfig"]
    assert config == {"candidateCount": 2, "responseLogprobs": True, "logprobs": 20}
    assert {"reasoning", "logprobs", "top_logprobs", "n"} <= gemini.PARAMETERS


SIGNED_TURN = Message(
    Role.ASSISTANT,
    (),
    tool_calls=(
        ToolCall("call_0", "get_weather", '{"city": "Oslo"}', signature="sig-call"),
        ToolCall("call_1", "get_time", "{}"),
    ),
    reasoning=(
        ReasoningBlock(GEMINI_REASONING, "Checking the weather first.", "sig-thought"),
        ReasoningBlock(ANTHROPIC_REASONING, "Claude's thinking", "claude-sig"),
    ),
)


def model_turn(message: Message, model: str) -> list[dict[str, Any]]:
    body = body_for(model, messages=(*HI, message))
    assert body["contents"][1]["role"] == "model"
    parts: list[dict[str, Any]] = body["contents"][1]["parts"]
    return parts


def test_a_signed_turn_goes_back_with_each_signature_on_its_own_part() -> None:
    assert model_turn(SIGNED_TURN, "gemini-2.5-flash") == [
        {"text": "Checking the weather first.", "thought": True, "thoughtSignature": "sig-thought"},
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
            "thoughtSignature": "sig-call",
        },
        {"functionCall": {"name": "get_time", "args": {}}},  # a parallel call carries none
    ]


def test_a_text_part_signature_goes_back_on_the_turns_text() -> None:
    message = Message.of(
        Role.ASSISTANT,
        "1+1 equals 2.",
        reasoning=(ReasoningBlock(GEMINI_REASONING, "", "sig-text"),),
    )
    assert model_turn(message, "gemini-3-flash-preview") == [
        {"text": "1+1 equals 2.", "thoughtSignature": "sig-text"}
    ]


def test_gemini_3_gets_the_placeholder_on_a_first_call_that_never_had_a_signature() -> None:
    message = Message(
        Role.ASSISTANT, (), tool_calls=(ToolCall("c", "f", "{}"), ToolCall("d", "g", "{}"))
    )
    assert model_turn(message, "gemini-3-pro-preview") == [
        {
            "functionCall": {"name": "f", "args": {}},
            "thoughtSignature": "skip_thought_signature_validator",
        },
        {"functionCall": {"name": "g", "args": {}}},
    ]
    # Older models validate nothing: no placeholder is invented for them.
    assert model_turn(message, "gemini-2.5-pro")[0] == {"functionCall": {"name": "f", "args": {}}}


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("API_KEY_INVALID", 400),
        ("API_KEY_SERVICE_BLOCKED", 403),
        ("API_KEY_HTTP_REFERRER_BLOCKED", 403),
        ("SERVICE_DISABLED", 403),
        ("CONSUMER_SUSPENDED", 403),
    ],
)
def test_a_refused_key_blames_the_routers_credential(reason: str, status: int) -> None:
    body = {
        "error": {
            "code": status,
            "message": f"refused: {reason}",
            "status": "INVALID_ARGUMENT" if status == 400 else "PERMISSION_DENIED",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}],
        }
    }
    error = error_from_body(status, orjson.dumps(body), "google", None)
    assert isinstance(error, UpstreamCredentialRejected)
    assert f"refused: {reason}" in str(error)


def test_a_plain_invalid_argument_stays_the_clients_bad_request() -> None:
    body = {"error": {"code": 400, "message": "Invalid JSON payload", "status": "INVALID_ARGUMENT"}}
    assert isinstance(error_from_body(400, orjson.dumps(body), "google", None), UpstreamBadRequest)


def sse(payload: Any) -> SseEvent:
    return SseEvent("message", orjson.dumps(payload).decode())


def test_an_error_in_a_data_event_ends_the_stream_with_the_providers_message() -> None:
    state = StreamState("google")
    out = state.feed(
        [
            sse({"candidates": [{"content": {"parts": [{"text": "Hal"}]}}]}),
            sse(
                {
                    "error": {
                        "code": 499,
                        "message": "The operation was cancelled.",
                        "status": "CANCELLED",
                    }
                }
            ),
            sse({"candidates": [{"content": {"parts": [{"text": "never"}]}}]}),
        ]
    )
    assert out == [TextDelta("Hal")]
    assert isinstance(state.error, UpstreamUnavailable)
    assert "The operation was cancelled." in str(state.error) and state.error.status == 499


def test_raw_lines_holding_several_json_values_are_each_read() -> None:
    state = StreamState("google")
    text = (
        '{"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n'
        '{"candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"}]}'
    )
    assert state.feed([SseEvent("raw", text), SseEvent("raw", "not json at all")]) == [
        TextDelta("ab")
    ]
    assert state.finished and state.error is None


def test_thoughts_signatures_and_calls_become_reasoning_blocks_and_signed_calls() -> None:
    state = StreamState("google")
    out = state.feed(
        [
            sse({"candidates": [{"content": {"parts": [{"text": "Plan ", "thought": True}]}}]}),
            sse(
                {
                    "candidates": [
                        {
                            "content": {
                                "parts": [
                                    {"text": "it.", "thought": True, "thoughtSignature": "t1"}
                                ]
                            }
                        }
                    ]
                }
            ),
            sse(
                {
                    "candidates": [
                        {
                            "content": {
                                "parts": [
                                    {"text": "Calling."},
                                    {
                                        "functionCall": {"name": "a", "args": {"x": 1}},
                                        "thoughtSignature": "c1",
                                    },
                                    {"functionCall": {"name": "b", "args": {}}},
                                ]
                            },
                            "finishReason": "STOP",
                        }
                    ]
                }
            ),
        ]
    )
    assert out == [
        ReasoningDelta("Plan it.", 0, GEMINI_REASONING, 1, "t1"),
        TextDelta("Calling."),
        ToolCallDelta(0, "call_0", "a", '{"x":1}', signature="c1"),
        ToolCallDelta(1, "call_1", "b", "{}"),
    ]
    assert state.final() == [FinishEvent(Finish.TOOL_CALLS, "STOP")]


def test_a_malformed_function_call_is_an_error_finish_with_its_message() -> None:
    state = StreamState("google")
    state.feed(
        [
            sse(
                {
                    "candidates": [
                        {
                            "content": {},
                            "finishReason": "MALFORMED_FUNCTION_CALL",
                            "finishMessage": "Malformed function call: print(default_api.f(",
                        }
                    ],
                    "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
                }
            )
        ]
    )
    final = state.final()
    assert final[-1] == FinishEvent(Finish.ERROR, "MALFORMED_FUNCTION_CALL")
    assert final[0].data == {"finish_message": "Malformed function call: print(default_api.f("}  # type: ignore[union-attr]


def test_top_logprobs_pair_with_the_chosen_tokens() -> None:
    state = StreamState("google")
    result = {
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.05}],
        "topCandidates": [
            {
                "candidates": [
                    {"token": "Hi", "logProbability": -0.05},
                    {"token": "Hello", "logProbability": -1.2},
                ]
            }
        ],
    }
    out = state.feed(
        [sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "logprobsResult": result}]})]
    )
    assert out == [
        TextDelta("Hi"),
        LogprobsDelta(
            (TokenLogprob("Hi", -0.05, top=(TopLogprob("Hi", -0.05), TopLogprob("Hello", -1.2))),)
        ),
    ]


def test_a_whole_json_array_body_is_the_complete_answer() -> None:
    body = orjson.dumps(
        [
            {"candidates": [{"content": {"parts": [{"text": "AI"}]}}]},
            {
                "candidates": [
                    {"content": {"parts": [{"text": " learns."}]}, "finishReason": "STOP"}
                ]
            },
        ]
    )
    assert StreamState("google").whole(body) == [
        TextDelta("AI learns."),
        FinishEvent(Finish.STOP, "STOP"),
    ]


def test_cache_marks_are_not_sent_since_gemini_caches_implicitly() -> None:
    marked = (
        Message(Role.SYSTEM, (TextPart("rules", CACHE_1H),)),
        Message(Role.USER, (TextPart("document", CACHE_5M), TextPart("question"))),
    )
    unmarked = tuple(
        Message(m.role, tuple(TextPart(p.text) for p in m.parts if isinstance(p, TextPart)))
        for m in marked
    )
    sent = body_for("gemini-2.5-flash", messages=marked)
    assert sent == body_for("gemini-2.5-flash", messages=unmarked)
    assert "cachedContent" not in sent
