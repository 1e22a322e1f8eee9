"""The OpenAI chat body per host dialect, and chunk parsing for tool calls and host usage."""

from __future__ import annotations

import orjson

from switchboard_core.config import Secret
from switchboard_router.canonical import (
    CompletionRequest,
    Finish,
    FinishEvent,
    ImagePart,
    Message,
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
from switchboard_router.providers.base import Target
from switchboard_router.providers.openai_chat import OpenAIChatAdapter, build_body, parse_batch
from switchboard_router.providers.sse import SseEvent

CONVERSATION = (
    Message.of(Role.SYSTEM, "be brief"),
    Message(
        Role.USER,
        (
            TextPart("what is this?"),
            ImagePart(data=b"\x89PNG", mime_type="image/png", detail="low"),
        ),
    ),
    Message(Role.ASSISTANT, (), tool_calls=(ToolCall("call_1", "lookup", '{"q":"png"}'),)),
    Message.of(Role.TOOL, "a picture format", tool_call_id="call_1"),
)
REQUEST = CompletionRequest(
    model="openai/gpt-4o",
    messages=CONVERSATION,
    max_tokens=50,
    seed=7,
    tools=(Tool("lookup", "Look a word up", {"type": "object"}),),
    tool_choice=ToolChoice(ToolChoiceMode.REQUIRED),
    response_format=ResponseFormat(ResponseFormatKind.JSON_SCHEMA, "answer", {"type": "object"}),
)


def target(dialect: str) -> Target:
    return Target(dialect, "http://host.invalid/v1", "m", Secret("k"), dialect=dialect)


def test_openai_gets_max_completion_tokens_and_full_messages() -> None:
    body = build_body(REQUEST, target("openai"))
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert body["stream_options"] == {"include_usage": True}
    system, user, assistant, tool = body["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["content"] == [
        {"type": "text", "text": "what is this?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw==", "detail": "low"},
        },
    ]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q":"png"}'},
            }
        ],
    }
    assert tool == {"role": "tool", "content": "a picture format", "tool_call_id": "call_1"}
    assert body["tool_choice"] == "required"
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }


def test_compatible_hosts_differ_only_where_their_dialect_says() -> None:
    mistral = build_body(REQUEST, target("mistral"))
    assert mistral["random_seed"] == 7 and "seed" not in mistral
    assert mistral["tool_choice"] == "any"
    assert "stream_options" not in mistral  # Mistral rejects unknown fields
    vllm = build_body(REQUEST, target("vllm"))
    assert vllm["max_tokens"] == 50 and vllm["seed"] == 7
    assert vllm["stream_options"] == {"include_usage": True}
    adapter = OpenAIChatAdapter(session=None)  # type: ignore[arg-type]
    assert "top_k" in adapter.parameters("together")
    assert "top_k" not in adapter.parameters("openai")
    assert "seed" not in adapter.parameters("deepseek")
    assert "structured_outputs" not in adapter.parameters("deepseek")
    assert "tool_choice" not in adapter.parameters("ollama")
    assert adapter.parameters("some-new-host") == adapter.parameters("")


def sse(*chunks: object) -> list[SseEvent]:
    return [SseEvent("message", orjson.dumps(c).decode()) for c in chunks]


def test_tool_call_deltas_keep_their_order_with_text() -> None:
    batch = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"content": "check."}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_9",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q"'}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ':"x"}'}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )
    parsed = parse_batch(batch, "openai")
    assert parsed.events == [
        TextDelta("Let me check."),
        ToolCallDelta(0, "call_9", "lookup", ""),
        ToolCallDelta(0, "", "", '{"q"'),
        ToolCallDelta(0, "", "", ':"x"}'),
        FinishEvent(Finish.TOOL_CALLS, "tool_calls"),
    ]
    assert parsed.finished


def test_usage_where_hosts_put_it() -> None:
    groq = parse_batch(
        sse({"choices": [], "x_groq": {"usage": {"prompt_tokens": 9, "completion_tokens": 3}}}),
        "groq",
    )
    assert groq.events == [UsageReport(9, 3)]
    deepseek = parse_batch(
        sse(
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 5,
                    "prompt_cache_hit_tokens": 64,
                    "prompt_cache_miss_tokens": 36,
                    "completion_tokens_details": {"reasoning_tokens": 2},
                },
            }
        ),
        "deepseek",
    )
    assert deepseek.events == [UsageReport(100, 5, cached_tokens=64, reasoning_tokens=2)]


def test_text_before_an_error_or_done_is_kept() -> None:
    parsed = parse_batch(
        [
            *sse({"choices": [{"index": 0, "delta": {"content": "partial"}}]}),
            SseEvent("message", '{"error": {"message": "overloaded", "type": "server_error"}}'),
        ],
        "openai",
    )
    assert parsed.events == [TextDelta("partial")]
    assert parsed.error is not None and parsed.error.reason == "UPSTREAM_UNAVAILABLE"
    done = parse_batch(
        [*sse({"choices": [{"delta": {"content": "end"}}]}), SseEvent("message", "[DONE]")], "x"
    )
    assert done.events == [TextDelta("end")] and done.done
    odd = parse_batch([SseEvent("message", "[1, 2]")], "x")
    assert odd.error is not None and odd.error.reason == "UPSTREAM_PROTOCOL_ERROR"
