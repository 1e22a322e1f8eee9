"""The OpenAI chat body per host dialect (reasoning, logprobs, n, what is never sent back), and
chunk parsing for tool calls, host usage and errors."""

from __future__ import annotations

import orjson

from switchboard_core.config import Secret
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    CACHE_1H,
    CACHE_5M,
    CompletionRequest,
    Finish,
    FinishEvent,
    ImagePart,
    Message,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningDelta,
    ReasoningEffort,
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
from switchboard_router.providers.openai_chat import OpenAIChatAdapter, build_body
from switchboard_router.providers.openai_dialects import effort_for
from switchboard_router.providers.openai_stream import StreamParser
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


ADAPTER = OpenAIChatAdapter(session=None)  # type: ignore[arg-type]


def reasoning_body(dialect: str, config: ReasoningConfig) -> dict[str, object]:
    request = CompletionRequest(model="m/m", messages=CONVERSATION[:2], reasoning=config)
    body = build_body(request, target(dialect))
    return {k: v for k, v in body.items() if k.startswith("reasoning")}


def test_reasoning_goes_as_each_host_takes_it() -> None:
    high = ReasoningConfig(effort=ReasoningEffort.HIGH)
    assert reasoning_body("openai", high) == {"reasoning_effort": "high"}
    assert reasoning_body("groq", high) == {"reasoning_effort": "high"}
    assert reasoning_body("openrouter", high) == {"reasoning": {"effort": "high"}}
    # Mistral takes "high" or "none" only.
    low = ReasoningConfig(effort=ReasoningEffort.LOW)
    assert reasoning_body("mistral", low) == {"reasoning_effort": "high"}
    assert reasoning_body("openai", ReasoningConfig(effort=ReasoningEffort.MINIMAL)) == {
        "reasoning_effort": "minimal"
    }
    # Open-weight hosts have no "minimal": the nearest they take.
    assert reasoning_body("vllm", ReasoningConfig(effort=ReasoningEffort.MINIMAL)) == {
        "reasoning_effort": "low"
    }
    # No effort and no budget: the model's default, so nothing is sent.
    assert reasoning_body("openai", ReasoningConfig()) == {}


def test_a_thinking_budget_becomes_an_effort_where_hosts_take_only_efforts() -> None:
    assert effort_for(1024, ("low", "medium", "high")) == "low"
    assert effort_for(4096, ("low", "medium", "high")) == "medium"
    assert effort_for(32000, ("low", "medium", "high")) == "high"
    assert effort_for(1024, ("none", "high")) == "high"
    budget = ReasoningConfig(max_tokens=6000)
    assert reasoning_body("openai", budget) == {"reasoning_effort": "medium"}
    # OpenRouter takes the budget itself, and exclude.
    assert reasoning_body("openrouter", ReasoningConfig(max_tokens=6000, exclude=True)) == {
        "reasoning": {"max_tokens": 6000, "exclude": True}
    }


def test_reasoning_switched_off_is_none_where_the_host_has_it_else_the_least() -> None:
    off = ReasoningConfig(enabled=False)
    assert reasoning_body("openai", off) == {"reasoning_effort": "none"}
    assert reasoning_body("mistral", off) == {"reasoning_effort": "none"}
    assert reasoning_body("groq", off) == {"reasoning_effort": "low"}
    assert reasoning_body("openrouter", off) == {"reasoning": {"enabled": False}}
    assert reasoning_body("openai", ReasoningConfig(effort=ReasoningEffort.NONE)) == {
        "reasoning_effort": "none"
    }


def test_hosts_list_only_the_parameters_they_take() -> None:
    for dialect in ("openai", "groq", "mistral", "together", "fireworks", "vllm", "openrouter"):
        assert "reasoning" in ADAPTER.parameters(dialect), dialect
    for dialect in ("deepseek", "ollama", "switchboard", "some-new-host"):
        assert "reasoning" not in ADAPTER.parameters(dialect), dialect
    for dialect in ("openai", "deepseek", "fireworks", "vllm", "openrouter"):
        assert {"logprobs", "top_logprobs"} <= ADAPTER.parameters(dialect), dialect
    for dialect in ("groq", "mistral", "together", "ollama"):
        assert "logprobs" not in ADAPTER.parameters(dialect), dialect
    for dialect in ("openai", "mistral", "together", "vllm"):
        assert "n" in ADAPTER.parameters(dialect), dialect
    for dialect in ("groq", "deepseek", "ollama", "openrouter"):
        assert "n" not in ADAPTER.parameters(dialect), dialect


def test_logprobs_top_logprobs_and_n_go_in_the_body() -> None:
    request = CompletionRequest(
        model="m/m", messages=CONVERSATION[:2], logprobs=True, top_logprobs=3, n=2
    )
    body = build_body(request, target("openai"))
    assert (body["logprobs"], body["top_logprobs"], body["n"]) == (True, 3, 2)
    # top_logprobs alone still asks for logprobs, as OpenAI requires.
    alone = build_body(
        CompletionRequest(model="m/m", messages=CONVERSATION[:2], top_logprobs=2), target("vllm")
    )
    assert (alone["logprobs"], alone["top_logprobs"]) == (True, 2)
    plain = build_body(CompletionRequest(model="m/m", messages=CONVERSATION[:2]), target("openai"))
    assert not {"logprobs", "top_logprobs", "n", "reasoning_effort"} & set(plain)


def test_reasoning_blocks_and_call_signatures_are_never_sent_back() -> None:
    signed = Message(
        Role.ASSISTANT,
        (TextPart("Let me look."),),
        tool_calls=(ToolCall("call_1", "lookup", "{}", signature="sig-from-gemini"),),
        reasoning=(ReasoningBlock(ANTHROPIC_REASONING, "thinking...", "sig"),),
    )
    request = CompletionRequest(model="m/m", messages=(CONVERSATION[0], signed))
    assistant = build_body(request, target("openai"))["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        ],
    }


def sse(*chunks: object) -> list[SseEvent]:
    return [SseEvent("message", orjson.dumps(c).decode()) for c in chunks]


def test_tool_call_deltas_keep_their_order_with_text() -> None:
    first = {"index": 0, "id": "call_9", "type": "function"}
    batch = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"content": "check."}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{**first, "function": {"name": "lookup", "arguments": ""}}]
                    },
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q"'}}]}}]},
        # vLLM repeats the name on later pieces of a call forced by a named tool_choice.
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {**first, "function": {"name": "lookup", "arguments": ':"x"}'}}
                        ]
                    }
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )
    parser = StreamParser("openai")
    assert parser.feed(batch).events == [
        TextDelta("Let me check."),
        ToolCallDelta(0, "call_9", "lookup", ""),
        ToolCallDelta(0, "", "", '{"q"'),
        ToolCallDelta(0, "", "", ':"x"}'),
        FinishEvent(Finish.TOOL_CALLS, "tool_calls"),
    ]
    assert parser.finished


def test_usage_where_hosts_put_it_is_relayed_once_at_the_end() -> None:
    groq = StreamParser("groq")
    x_groq = {"x_groq": {"usage": {"prompt_tokens": 9, "completion_tokens": 3}}}
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    assert groq.feed(sse({**finish, **x_groq}, {"choices": [], **x_groq})).events == [
        FinishEvent(Finish.STOP, "stop")
    ]
    assert groq.close() == [UsageReport(9, 3)]
    deepseek = StreamParser("deepseek")
    deepseek.feed(
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
        )
    )
    assert deepseek.close() == [UsageReport(100, 5, cached_tokens=64, reasoning_tokens=2)]
    assert StreamParser("x").close() == []  # no usage reported: none relayed


def test_text_before_an_error_or_done_is_kept() -> None:
    parsed = StreamParser("openai").feed(
        [
            *sse({"choices": [{"index": 0, "delta": {"content": "partial"}}]}),
            SseEvent("message", '{"error": {"message": "overloaded", "type": "server_error"}}'),
        ]
    )
    assert parsed.events == [TextDelta("partial")]
    assert parsed.error is not None and parsed.error.reason == "UPSTREAM_UNAVAILABLE"
    done = StreamParser("x").feed(
        [*sse({"choices": [{"delta": {"content": "end"}}]}), SseEvent("message", "[DONE]")]
    )
    assert done.events == [TextDelta("end")] and done.done
    odd = StreamParser("x").feed([SseEvent("message", "[1, 2]")])
    assert odd.error is not None and odd.error.reason == "UPSTREAM_PROTOCOL_ERROR"


def test_content_parts_from_any_host_never_crash_the_parser() -> None:
    parser = StreamParser("mistral")
    content = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}, "junk"]},
        {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}},
        {"type": "reference", "reference_ids": [1]},
        {"type": "text", "text": "Answer"},
        "junk",
        {"type": "text", "text": 7},
    ]
    parsed = parser.feed(sse({"choices": [{"index": 0, "delta": {"content": content}}]}))
    assert parsed.events == [ReasoningDelta("hm"), TextDelta("Answer")]
    assert parsed.error is None


def test_cache_marks_go_to_hosts_that_take_cache_control_and_no_others() -> None:
    marked = CompletionRequest(
        model="anthropic/claude-x",
        messages=(
            Message(Role.SYSTEM, (TextPart("rules", CACHE_1H),)),
            Message(Role.USER, (TextPart("document", CACHE_5M), TextPart("question"))),
        ),
    )
    sent = build_body(marked, target("openrouter"))["messages"]
    assert sent[0]["content"] == [
        {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert sent[1]["content"] == [
        {"type": "text", "text": "document", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "question"},
    ]
    for host in ("openai", "deepseek", "some-host"):  # they cache on their own: no marks
        plain = build_body(marked, target(host))["messages"]
        assert [m["content"] for m in plain] == ["rules", "documentquestion"]
