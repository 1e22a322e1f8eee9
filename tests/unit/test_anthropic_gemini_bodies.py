"""Anthropic and Gemini request bodies, and stream edge cases parsed without a network."""

from __future__ import annotations

import orjson

from switchboard_core.config import Secret
from switchboard_router.canonical import (
    GEMINI_REASONING,
    CompletionRequest,
    Finish,
    FinishEvent,
    ImagePart,
    Message,
    PromptUsage,
    ProviderMetadata,
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    UsageReport,
)
from switchboard_router.providers import anthropic_messages, gemini
from switchboard_router.providers.base import Target, UpstreamRateLimited
from switchboard_router.providers.sse import SseEvent

CONVERSATION = (
    Message.of(Role.SYSTEM, "Be brief."),
    Message.of(Role.SYSTEM, "Answer in English."),
    Message(
        Role.USER,
        (
            TextPart("Weather where this photo was taken, and the time?"),
            ImagePart(data=b"\xff\xd8jpeg", mime_type="image/jpeg"),
            ImagePart(url="https://example.com/street.png"),
        ),
    ),
    Message(
        Role.ASSISTANT,
        (TextPart("Looking."),),
        tool_calls=(
            ToolCall("call_w", "get_weather", '{"city": "Oslo"}'),
            ToolCall("call_t", "get_time", "{}"),
        ),
    ),
    Message.of(Role.TOOL, '{"temp_c": 4}', tool_call_id="call_w"),
    Message.of(Role.TOOL, "14:05", tool_call_id="call_t"),
)
TOOLS = (
    Tool("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}}),
    Tool("get_time", "Time", {"type": "object"}),
)
REQUEST = CompletionRequest(
    model="x/y",
    messages=CONVERSATION,
    temperature=0.2,
    top_k=20,
    stop=("END",),
    tools=TOOLS,
    tool_choice=ToolChoice(ToolChoiceMode.TOOL, "get_weather"),
    parallel_tool_calls=False,
    user="user-7",
)
TARGET = Target("p", "http://host.invalid/v1", "model-1", Secret("k"), max_completion_tokens=8192)


def test_anthropic_body() -> None:
    body = anthropic_messages.build_body(REQUEST, TARGET)
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert body["max_tokens"] == 8192  # required: the endpoint's cap when the request has none
    assert body["stop_sequences"] == ["END"] and body["top_k"] == 20
    assert body["metadata"] == {"user_id": "user-7"}
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    user, assistant, results = body["messages"]
    assert user["role"] == "user"
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9hqcGVn"},
    }
    assert user["content"][2]["source"] == {"type": "url", "url": "https://example.com/street.png"}
    assert assistant["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_w", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_t", "name": "get_time", "input": {}},
    ]
    # Both results in one user turn: Anthropic needs roles to alternate.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_w", "content": '{"temp_c": 4}'},
            {"type": "tool_result", "tool_use_id": "call_t", "content": "14:05"},
        ],
    }
    bare = anthropic_messages.build_body(
        CompletionRequest(model="x/y", messages=(Message.of(Role.USER, "hi"),)),
        Target("p", "http://h/v1", "m", Secret("")),
    )
    assert bare["max_tokens"] == anthropic_messages.DEFAULT_MAX_TOKENS
    assert "system" not in bare and "tool_choice" not in bare


def events(*pairs: tuple[str, object]) -> list[SseEvent]:
    return [SseEvent(kind, orjson.dumps(data).decode()) for kind, data in pairs]


def test_anthropic_stream_state_tool_indices_and_usage() -> None:
    state = anthropic_messages.StreamState("anthropic")
    start = {
        "type": "message_start",
        "message": {
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}
        },
    }
    out = state.feed(
        events(
            ("message_start", start),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "hmm"},
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "text_delta", "text": "Hi"},
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 2,
                    "content_block": {"type": "tool_use", "id": "tu_1", "name": "f", "input": {}},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": "{}"},
                },
            ),
            ("ping", {"type": "ping"}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"output_tokens": 12},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        )
    )
    from switchboard_router.canonical import ANTHROPIC_REASONING, ReasoningDelta

    assert out == [
        PromptUsage(100, cached_tokens=90),  # from message_start, before any text
        ReasoningDelta("hmm", format=ANTHROPIC_REASONING, block=0),  # thinking: block 0
        TextDelta("Hi"),
        ToolCallDelta(0, "tu_1", "f"),
        ToolCallDelta(0, arguments="{}"),
    ]
    assert state.stopped
    assert state.final() == [
        UsageReport(100, 12, cached_tokens=90),
        FinishEvent(Finish.TOOL_CALLS, "tool_use"),
    ]
    failing = anthropic_messages.StreamState("anthropic")
    failing.feed(
        events(
            (
                "error",
                {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            )
        )
    )
    assert isinstance(failing.error, UpstreamRateLimited)
    assert str(failing.error) == "upstream provider anthropic answered HTTP 429: slow down"


def test_gemini_body() -> None:
    fmt = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, "w", {"type": "object"})
    body = gemini.build_body(
        CompletionRequest(
            model="x/y",
            messages=CONVERSATION,
            max_tokens=99,
            seed=5,
            response_format=fmt,
            tools=TOOLS,
            tool_choice=ToolChoice(ToolChoiceMode.TOOL, "get_time"),
        ),
        TARGET,
    )
    assert body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Answer in English."}]
    }
    assert body["generationConfig"] == {
        "maxOutputTokens": 99,
        "seed": 5,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
    }
    declared = body["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in declared] == ["get_weather", "get_time"]
    user, model, results = body["contents"]
    assert [p.get("inlineData", p.get("fileData")) for p in user["parts"][1:]] == [
        {"mimeType": "image/jpeg", "data": "/9hqcGVn"},
        {"mimeType": "image/png", "fileUri": "https://example.com/street.png"},
    ]
    assert model["role"] == "model"
    assert model["parts"][1] == {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 4}}},
            {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}},
        ],
    }


def test_gemini_blocked_prompt_thoughts_and_retry_delay() -> None:
    state = gemini.StreamState("google")
    out = state.feed(
        [
            SseEvent(
                "message",
                orjson.dumps(
                    {
                        "candidates": [
                            {
                                "content": {
                                    "parts": [{"text": "plan", "thought": True}, {"text": "Hi"}]
                                }
                            }
                        ]
                    }
                ).decode(),
            ),
        ]
    )
    assert out == [ReasoningDelta("plan", 0, GEMINI_REASONING, 1), TextDelta("Hi")]
    blocked = gemini.StreamState("google")
    blocked.feed(
        [
            SseEvent(
                "message",
                orjson.dumps(
                    {
                        "promptFeedback": {"blockReason": "SAFETY"},
                        "usageMetadata": {"promptTokenCount": 8},
                    }
                ).decode(),
            )
        ]
    )
    assert blocked.final() == [
        ProviderMetadata({"prompt_feedback": {"blockReason": "SAFETY"}}),
        UsageReport(8, 0),
        FinishEvent(Finish.CONTENT_FILTER, "SAFETY"),
    ]
    body = orjson.dumps(
        [
            {
                "error": {
                    "code": 429,
                    "message": "quota",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
                    ],
                }
            }
        ]
    )
    error = gemini.error_from_body(429, body, "google", None)
    assert isinstance(error, UpstreamRateLimited) and error.retry_after_seconds == 37.0
