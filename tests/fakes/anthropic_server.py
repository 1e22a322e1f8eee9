"""A fake Anthropic messages server that renders a Script in Anthropic's wire format.

Streaming: ``message_start`` (usage with input and cache tokens, output 1), then with
``Script.redacted_reasoning`` one ``redacted_thinking`` block per element (its ``data`` whole at
``content_block_start``) and with ``Script.signed_reasoning`` a ``thinking`` block
(``thinking_delta`` per ``Script.reasoning`` piece, then ``signature_delta`` with
``signature_for(the whole text)``), a text block with ``text_delta`` pieces, one ``tool_use``
block per call (``input: {}`` then ``input_json_delta`` pieces), ``message_delta`` (stop
reason, cumulative usage), ``message_stop``; ``ping`` events and an ``error`` event on failure.
Anthropic's ``input_tokens`` excludes cache reads and writes, so the canonical prompt count is
split accordingly. Anthropic always reports usage; for ``Script.usage=None`` the fake reports
zeros. Reference: https://docs.claude.com/en/docs/build-with-claude/streaming

With ``thinking`` enabled the fake checks the request as Anthropic does and answers its real
400 bodies: a budget of at least 1024 below ``max_tokens``; every ``thinking`` block sent back
signed as this fake signed it (``Invalid `signature` in `thinking` block``), every
``redacted_thinking`` block one it sent; and a tool-use turn answered by tool results must start
with the thinking block(s) (``Expected `thinking` or `redacted_thinking`, but found
`tool_use`...``). Reference: https://docs.claude.com/en/docs/build-with-claude/extended-thinking

With ``Script.prompt_cache`` the fake keeps Anthropic's prompt cache as :mod:`.anthropic_cache`
says: it refuses the marks Anthropic refuses, counts the prompt it was sent, and reports cache
writes (with ``cache_creation``'s 5-minute / 1-hour split in ``message_start``) and, for a
prefix an earlier request marked, cache reads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes import anthropic_cache
from tests.fakes.faults import NO_FAULTS, Faults
from tests.fakes.http_fake import (
    Handler,
    Playlist,
    Sse,
    json_response,
    play,
    script_for,
    serve_routes,
    sse,
)
from tests.fakes.model_list_pages import DEFAULT_MODELS, page_after, requested_size
from tests.fakes.script import FakeProvider, Script, ScriptUsage, signature_for

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
THINKING_BLOCKS = ("thinking", "redacted_thinking")
UNSIGNED_TOOL_TURN = (
    "messages.{turn}.content.0.type: Expected `thinking` or `redacted_thinking`, but found"
    " `{found}`. When `thinking` is enabled, a final `assistant` message must start with a"
    " thinking block"
    " (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you"
    " include thinking blocks from previous turns. To avoid this requirement, disable `thinking`."
    " Please consult our documentation at"
    " https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def usage_json(
    usage: ScriptUsage | None, output: int | None = None, write_1h: int | None = None
) -> dict[str, Any]:
    """Anthropic's usage; with ``write_1h`` (of the writes, those for an hour) also the
    ``cache_creation`` split, which Anthropic sends in ``message_start`` and whole messages."""
    u = usage or ScriptUsage(0, 0)
    out: dict[str, Any] = {
        "input_tokens": u.prompt_tokens - u.cached_tokens - u.cache_write_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens if output is None else output,
    }
    if write_1h is not None:
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": u.cache_write_tokens - write_1h,
            "ephemeral_1h_input_tokens": write_1h,
        }
    return out


def error_json(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_response(script: Script) -> web.Response:
    if script.error_kind == "context_length":
        body = error_json(
            "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"
        )
        return json_response(body, 400)
    kind = ERROR_TYPES.get(script.status, "api_error")
    headers = {"retry-after": script.retry_after} if script.retry_after else None
    return json_response(error_json(kind, script.error_message), script.status, headers)


def message_json(
    script: Script,
    model: str,
    content: list[dict[str, Any]],
    stop: str | None,
    usage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def block_events(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[Sse]:
    """One whole content block: its start, its deltas, its stop."""
    events = [
        sse(
            {"type": "content_block_start", "index": index, "content_block": start},
            "content_block_start",
        )
    ]
    events += [
        sse({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta")
        for d in deltas
    ]
    events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return events


def reasoning_head(script: Script) -> list[Sse]:
    """The redacted and signed thinking blocks the answer opens with."""
    events: list[Sse] = []
    for index, data in enumerate(script.redacted_reasoning):
        events += block_events(index, {"type": "redacted_thinking", "data": data}, [])
    if script.signed_reasoning and script.reasoning:
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in script.reasoning]
        deltas.append(
            {"type": "signature_delta", "signature": signature_for("".join(script.reasoning))}
        )
        start = {"type": "thinking", "thinking": "", "signature": ""}
        events += block_events(len(script.redacted_reasoning), start, deltas)
    return events


def reasoning_content(script: Script) -> list[dict[str, Any]]:
    """The same blocks in a whole message."""
    content: list[dict[str, Any]] = [
        {"type": "redacted_thinking", "data": data} for data in script.redacted_reasoning
    ]
    if script.signed_reasoning and script.reasoning:
        text = "".join(script.reasoning)
        content.append({"type": "thinking", "thinking": text, "signature": signature_for(text)})
    return content


def render_stream(script: Script, model: str, write_1h: int | None = None) -> Playlist:
    start = message_json(script, model, [], None, usage_json(script.usage, 1, write_1h))
    playlist = Playlist(head=[sse({"type": "message_start", "message": start}, "message_start")])
    playlist.head += reasoning_head(script)
    block = len(script.redacted_reasoning) + int(bool(script.signed_reasoning and script.reasoning))
    if script.text:
        playlist.head.append(
            sse(
                {
                    "type": "content_block_start",
                    "index": block,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
        )
        if script.odd:
            playlist.head.append(sse({"type": "ping"}, "ping"))
        for piece in script.text:
            delta = {
                "type": "content_block_delta",
                "index": block,
                "delta": {"type": "text_delta", "text": piece},
            }
            playlist.content.append([sse(delta, "content_block_delta")])
        stop = sse({"type": "content_block_stop", "index": block}, "content_block_stop")
        if script.tool_calls:
            playlist.content[-1].append(stop)
        else:
            playlist.tail.append(stop)
        block += 1
    for offset, call in enumerate(script.tool_calls):
        index = block + offset
        opening = {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
        }
        pieces = [
            sse(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": p},
                },
                "content_block_delta",
            )
            for p in call.arguments
        ]
        pieces[0:0] = [sse(opening, "content_block_start")]
        for i, event in enumerate(pieces[1:], 1):
            playlist.content.append([pieces[0], event] if i == 1 else [event])
        playlist.content[-1].append(
            sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        )
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": STOP_REASONS[script.finish], "stop_sequence": None},
        "usage": usage_json(script.usage),
    }
    playlist.tail += [sse(final, "message_delta"), sse({"type": "message_stop"}, "message_stop")]
    playlist.failure = [sse(error_json("overloaded_error", "Overloaded"), "error")]
    if script.odd:
        playlist.keepalive = b'event: ping\ndata: {"type": "ping"}\n\n'
    return playlist


def render_whole(script: Script, model: str, write_1h: int | None = None) -> dict[str, Any]:
    content = reasoning_content(script)
    if script.text:
        content.append({"type": "text", "text": script.full_text})
    for call in script.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": json.loads(call.arguments_json),
            }
        )
    return message_json(
        script,
        model,
        content,
        STOP_REASONS[script.finish],
        usage_json(script.usage, None, write_1h),
    )


async def messages(request: web.Request, body: Any, fake: FakeProvider) -> web.StreamResponse:
    script = script_for(request, fake)  # with the request's drawn fault
    # The API takes the key as x-api-key; the official SDK (2.x) sends a bearer token.
    if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
        message = "x-api-key header is required"
        return json_response(error_json("authentication_error", message), 401)
    if not request.headers.get("anthropic-version"):
        return json_response(
            error_json("invalid_request_error", "anthropic-version header is required"), 400
        )
    if not isinstance(body, dict) or "max_tokens" not in body:
        return json_response(error_json("invalid_request_error", "max_tokens: Field required"), 400)
    if script.status != 200:
        return error_response(script)
    refusal = thinking_problem(body, script)
    if refusal is not None:
        return json_response(error_json("invalid_request_error", refusal), 400)
    write_1h = None
    if script.prompt_cache:
        refused = anthropic_cache.problem(body)
        if refused is not None:
            return json_response(error_json("invalid_request_error", refused), 400)
        script, write_1h = with_cache_usage(script, body, fake)
    model = str(body.get("model", ""))
    if not body.get("stream"):
        return json_response(render_whole(script, model, write_1h))
    return await play(request, fake, render_stream(script, model, write_1h))


def with_cache_usage(
    script: Script, body: dict[str, Any], fake: FakeProvider
) -> tuple[Script, int]:
    """The script with the prompt's cache usage (after the fake's earlier requests), and the
    tokens written for an hour."""
    earlier = [recorded.body for recorded in fake.requests[:-1]]  # the last is this one
    cache = anthropic_cache.usage(body, earlier)
    completion = script.usage.completion_tokens if script.usage else 0
    counts = ScriptUsage(
        cache.prompt_tokens, completion, cached_tokens=cache.read, cache_write_tokens=cache.written
    )
    return dataclasses.replace(script, usage=counts), cache.write_1h


def thinking_problem(body: dict[str, Any], script: Script) -> str | None:
    """Anthropic's message for a request it refuses with thinking on, None when it is fine."""
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if body["max_tokens"] <= budget:
        return (
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our"
            " documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
            "#max-tokens-and-context-window-size"
        )
    messages = body.get("messages") or []
    for turn, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        for position, block in enumerate(content):
            if block.get("type") == "thinking" and block.get("signature") != signature_for(
                str(block.get("thinking", ""))
            ):
                return (
                    f"messages.{turn}.content.{position}: Invalid `signature` in `thinking` block"
                )
            if (
                block.get("type") == "redacted_thinking"
                and block.get("data") not in script.redacted_reasoning
            ):
                where = f"messages.{turn}.content.{position}"
                return f"{where}: Invalid `data` in `redacted_thinking` block"
    return unsigned_tool_turn(messages)


def unsigned_tool_turn(messages: list[Any]) -> str | None:
    """The refusal of a tool-use turn, answered by tool results, that opens without thinking."""
    for turn in range(len(messages) - 1, -1, -1):
        message = messages[turn]
        if message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list) or not any(b.get("type") == "tool_use" for b in content):
            return None
        following = messages[turn + 1].get("content") if turn + 1 < len(messages) else None
        answered = isinstance(following, list) and any(
            b.get("type") == "tool_result" for b in following
        )
        if answered and content[0].get("type") not in THINKING_BLOCKS:
            return UNSIGNED_TOOL_TURN.format(turn=turn, found=content[0].get("type"))
        return None
    return None


def model_list(models: Sequence[str], page_size: int) -> Handler:
    """``GET /v1/models?limit=&after_id=``: Anthropic's paged list (``limit`` 1 to 1000,
    default 20; at most ``page_size`` here), newest first as the API orders it (here: as
    given). Reference: https://docs.claude.com/en/api/models-list"""

    async def list_models(request: web.Request, body: Any, fake: FakeProvider) -> web.Response:
        if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            message = "x-api-key header is required"
            return json_response(error_json("authentication_error", message), 401)
        if fake.script.status != 200:
            return error_response(fake.script)
        size = requested_size(request.query.get("limit"), 20, min(1000, page_size))
        page, more = page_after(models, request.query.get("after_id", ""), size)
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2025-05-14T00:00:00Z",
            }
            for model in page
        ]
        first, last = (page[0], page[-1]) if page else (None, None)
        return json_response({"data": data, "has_more": more, "first_id": first, "last_id": last})

    return list_models


@asynccontextmanager
async def serve(
    script: Script,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    page_size: int = 1000,
    faults: Faults = NO_FAULTS,
) -> AsyncIterator[FakeProvider]:
    """``models``: what ``GET /v1/models`` lists, at most ``page_size`` a page; ``faults``:
    how it misbehaves (:mod:`tests.fakes.faults`; ``fake.inject`` switches them later)."""
    routes = [("/messages", messages), ("GET /models", model_list(models, page_size))]
    async with serve_routes(script, "/v1", routes, faults) as fake:
        yield fake
