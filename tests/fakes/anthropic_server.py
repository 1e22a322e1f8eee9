"""A fake Anthropic messages server that renders a Script in Anthropic's wire format.

Streaming: ``message_start`` (usage with input and cache tokens, output 1), a text block with
``text_delta`` pieces, one ``tool_use`` block per call (``input: {}`` then ``input_json_delta``
pieces), ``message_delta`` (stop reason, cumulative usage), ``message_stop``; ``ping`` events
and an ``error`` event on failure. Anthropic's ``input_tokens`` excludes cache reads and
writes, so the canonical prompt count is split accordingly. Anthropic always reports usage;
for ``Script.usage=None`` the fake reports zeros. Reference:
https://docs.anthropic.com/en/docs/build-with-claude/streaming
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes.http_fake import Playlist, json_response, play, serve_routes, sse
from tests.fakes.script import FakeProvider, Script, ScriptUsage

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
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


def usage_json(usage: ScriptUsage | None, output: int | None = None) -> dict[str, Any]:
    u = usage or ScriptUsage(0, 0)
    return {
        "input_tokens": u.prompt_tokens - u.cached_tokens - u.cache_write_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens if output is None else output,
    }


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


def render_stream(script: Script, model: str) -> Playlist:
    start = message_json(script, model, [], None, usage_json(script.usage, output=1))
    playlist = Playlist(head=[sse({"type": "message_start", "message": start}, "message_start")])
    block = 0
    if script.text:
        playlist.head.append(
            sse(
                {
                    "type": "content_block_start",
                    "index": 0,
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
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            playlist.content.append([sse(delta, "content_block_delta")])
        stop = sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        if script.tool_calls:
            playlist.content[-1].append(stop)
        else:
            playlist.tail.append(stop)
        block = 1
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


def render_whole(script: Script, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
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
        script, model, content, STOP_REASONS[script.finish], usage_json(script.usage)
    )


async def messages(request: web.Request, body: Any, fake: FakeProvider) -> web.StreamResponse:
    script = fake.script
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
    model = str(body.get("model", ""))
    if not body.get("stream"):
        return json_response(render_whole(script, model))
    return await play(request, fake, render_stream(script, model))


@asynccontextmanager
async def serve(script: Script) -> AsyncIterator[FakeProvider]:
    async with serve_routes(script, "/v1", [("/messages", messages)]) as fake:
        yield fake
