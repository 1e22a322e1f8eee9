"""The relay's events as OpenAI chunks and completions (read back with the openai SDK's own
types), errors in OpenAI's JSON, and the model list with OpenRouter's per-token prices."""

from __future__ import annotations

from decimal import Decimal

from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_core.errors import InvalidArgument, ResourceExhausted
from switchboard_core.pricing import PriceSheet
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    Finish,
    FinishEvent,
    LogprobsDelta,
    ReasoningBlock,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.edge.openai_errors import error_body
from switchboard_router.edge.openai_models import model_json
from switchboard_router.edge.openai_response import completion_json
from switchboard_router.edge.openai_stream import ChunkStream
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.responses import WholeCompletion

ROUTE = Route(
    "p:x/y", "x/y", "p", 1, "http://h", "p", "m", PriceSheet.flat("1", "2"), 8192, 1024, frozenset()
)
BLOCK = ReasoningBlock(ANTHROPIC_REASONING, "thinking", "c2ln")
EVENTS: list[RelayEvent] = [
    Started("gen-1", ROUTE, 1_700_000_000.5),
    ReasoningDelta("think", format=ANTHROPIC_REASONING),
    TextDelta("Hi"),
    LogprobsDelta((TokenLogprob("Hi", -0.25, (72, 105), (TopLogprob("Hey", -1.5),)),)),
    ToolCallDelta(0, "call_1", "lookup", '{"q"'),
    ToolCallDelta(0, arguments=': "x"}'),
    Completed(
        FinishEvent(Finish.TOOL_CALLS, "tool_use"),
        UsageReport(10, 5, cached_tokens=4, reasoning_tokens=2),
        Decimal("0.000123456789"),
        {0: (BLOCK,)},
    ),
]


def test_a_stream_is_chunks_the_openai_sdk_reads_with_usage_last() -> None:
    render = ChunkStream(include_usage=True)
    chunks = [ChatCompletionChunk.model_validate(c) for e in EVENTS for c in render.chunks(e)]
    assert {c.id for c in chunks} == {"gen-1"} and {c.model for c in chunks} == {"x/y"}
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Hi"
    assert [getattr(d, "reasoning", None) for d in deltas].count("think") == 1
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert calls[0].id == "call_1" and calls[0].function and calls[0].function.name == "lookup"
    assert "".join(c.function.arguments or "" for c in calls if c.function) == '{"q": "x"}'
    logprobs = next(c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs)
    assert logprobs.content and logprobs.content[0].top_logprobs[0].token == "Hey"
    finish = chunks[-2].choices[0]
    assert finish.finish_reason == "tool_calls"
    assert finish.delta.model_extra and finish.delta.model_extra["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "text": "thinking",
            "signature": "c2ln",
            "format": ANTHROPIC_REASONING,
            "index": 0,
        }
    ]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == 15
    assert last.usage.prompt_tokens_details and last.usage.prompt_tokens_details.cached_tokens == 4
    details = last.usage.completion_tokens_details
    assert details and details.reasoning_tokens == 2
    extra = last.usage.model_extra or {}
    assert extra["cost"] == 0.000123456789 and extra["cost_usd"] == "0.000123456789"
    assert all(c.usage is None for c in chunks[:-1])


def test_without_include_usage_no_chunk_mentions_usage() -> None:
    render = ChunkStream(include_usage=False)
    chunks = [c for e in EVENTS for c in render.chunks(e)]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_whole_completion_is_a_chat_completion() -> None:
    whole = WholeCompletion()
    for event in EVENTS:
        whole.add(event)
    completion = ChatCompletion.model_validate(completion_json(whole.result()))
    assert completion.id == "gen-1" and completion.created == 1_700_000_000
    assert completion.object == "chat.completion"
    assert (completion.model_extra or {})["provider"] == "p"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Hi"
    calls = choice.message.tool_calls or []
    assert calls[0].function.arguments == '{"q": "x"}'  # type: ignore[union-attr]
    extra = choice.message.model_extra or {}
    assert extra["reasoning"] == "think"
    assert extra["reasoning_details"][0]["signature"] == "c2ln"
    assert completion.usage and completion.usage.completion_tokens == 5


def test_errors_are_openai_json_with_the_field_as_param() -> None:
    error = InvalidArgument([("messages[0].role", "required"), ("model", "required")])
    body = error_body(error, 400)["error"]
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "messages[0].role" and body["code"] == "invalid_argument"
    assert len(body["metadata"]["violations"]) == 2
    limited = error_body(ResourceExhausted("slow down", reason="RATE_LIMITED"), 429)["error"]
    assert limited["type"] == "rate_limit_error" and limited["code"] == "rate_limited"


def test_models_are_openai_models_with_openrouter_prices_per_token() -> None:
    model = catalog_pb2.Model(
        id="x/y",
        display_name="Y",
        context_length=8192,
        input_modalities=["text", "image"],
        output_modalities=["text"],
        endpoints=[
            catalog_pb2.Endpoint(
                provider_id="b",
                pricing=common_pb2.Pricing(prompt_usd_per_mtok="3", completion_usd_per_mtok="4"),
            ),
            catalog_pb2.Endpoint(
                provider_id="a",
                context_length=4096,
                supported_parameters=["tools"],
                pricing=common_pb2.Pricing(
                    prompt_usd_per_mtok="0.15", completion_usd_per_mtok="0.6", request_usd="0.01"
                ),
            ),
        ],
    )
    shown = model_json(model)
    assert Model.model_validate(shown).owned_by == "x"
    assert shown["pricing"]["prompt"] == "0.00000015"
    assert shown["pricing"]["completion"] == "0.0000006"
    assert shown["pricing"]["input_cache_read"] == "0.00000015"
    assert shown["pricing"]["request"] == "0.01"
    assert shown["top_provider"]["context_length"] == 4096
    assert shown["architecture"]["modality"] == "text+image->text"
    assert shown["supported_parameters"] == ["tools"]
