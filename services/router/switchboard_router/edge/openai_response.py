"""A completion as OpenAI's ``chat.completion`` JSON, with OpenRouter's additions: the
generation id as ``id``, the serving ``provider`` and ``model``, ``reasoning`` and
``reasoning_details`` on the message, ``native_finish_reason``, and ``usage`` with ``cost``.

``usage.cost`` is a JSON number, as OpenRouter sends it; it is written from the ledger's
exact decimal (its shortest float form prints the same digits for any cost of up to 15
significant digits). ``usage.cost_usd`` carries the same amount as the exact decimal string
the gRPC API and the ledger use, for clients that add costs up.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2

FINISH_REASONS: dict[int, str | None] = {
    common_pb2.FINISH_REASON_UNSPECIFIED: None,
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    common_pb2.FINISH_REASON_ERROR: "error",
    common_pb2.FINISH_REASON_CANCELLED: "error",
}
JsonObject = dict[str, Any]


def finish_reason(reason: int) -> str | None:
    return FINISH_REASONS.get(reason)


def usage_json(usage: common_pb2.Usage, cost_usd: str) -> JsonObject:
    out: JsonObject = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": float(Decimal(cost_usd or "0")),
        "cost_usd": cost_usd or "0",
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "audio_tokens": usage.audio_prompt_tokens,
        },
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": usage.audio_completion_tokens,
        },
    }
    if usage.estimated:
        out["estimated"] = True
    return out


def reasoning_details(details: Iterable[common_pb2.ReasoningDetail]) -> list[JsonObject]:
    """OpenRouter's ``reasoning_details``: ``reasoning.text`` blocks (with their signature)
    and ``reasoning.encrypted`` ones (redacted data), each with its ``format`` and ``index``."""
    out: list[JsonObject] = []
    for index, detail in enumerate(details):
        if detail.redacted_data:
            block: JsonObject = {"type": "reasoning.encrypted", "data": detail.redacted_data}
        else:
            block = {"type": "reasoning.text", "text": detail.text}
            if detail.signature:
                block["signature"] = detail.signature
        block["format"] = detail.format
        block["index"] = index
        out.append(block)
    return out


def logprobs_json(tokens: Iterable[router_pb2.TokenLogprob]) -> list[JsonObject]:
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": list(t.token_bytes) if t.token_bytes else None,
            "top_logprobs": [
                {
                    "token": top.token,
                    "logprob": top.logprob,
                    "bytes": list(top.token_bytes) if top.token_bytes else None,
                }
                for top in t.top_logprobs
            ],
        }
        for t in tokens
    ]


def tool_calls_json(calls: Iterable[common_pb2.ToolCall]) -> list[JsonObject]:
    out = []
    for call in calls:
        item: JsonObject = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json or "{}"},
        }
        if call.signature:  # Gemini's thought signature: send it back with the call
            item["signature"] = call.signature
        out.append(item)
    return out


def _choice(choice: router_pb2.Choice) -> JsonObject:
    calls = tool_calls_json(choice.tool_calls)
    message: JsonObject = {
        "role": "assistant",
        "content": choice.text if choice.text or not calls else None,
        "refusal": choice.refusal or None,
    }
    if choice.reasoning:
        message["reasoning"] = choice.reasoning
    if choice.reasoning_details:
        message["reasoning_details"] = reasoning_details(choice.reasoning_details)
    if calls:
        message["tool_calls"] = calls
    logprobs = None
    if choice.logprobs or choice.refusal_logprobs:
        logprobs = {
            "content": logprobs_json(choice.logprobs) or None,
            "refusal": logprobs_json(choice.refusal_logprobs) or None,
        }
    return {
        "index": choice.index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason(choice.finish_reason),
        "native_finish_reason": choice.native_finish_reason or None,
    }


def completion_json(reply: router_pb2.CreateCompletionResponse) -> JsonObject:
    """The ``chat.completion`` object of a whole completion."""
    choices = list(reply.choices) or [
        router_pb2.Choice(
            index=0,
            text=reply.text,
            reasoning=reply.reasoning,
            refusal=reply.refusal,
            tool_calls=reply.tool_calls,
            finish_reason=reply.finish_reason,
            native_finish_reason=reply.native_finish_reason,
            reasoning_details=reply.reasoning_details,
            logprobs=reply.logprobs,
            refusal_logprobs=reply.refusal_logprobs,
        )
    ]
    return {
        "id": reply.generation_id,
        "object": "chat.completion",
        "created": reply.create_time.seconds,
        "model": reply.model,
        "provider": reply.provider,
        "system_fingerprint": None,
        "choices": [_choice(c) for c in choices],
        "usage": usage_json(reply.usage, reply.cost_usd),
    }
