"""A fake OpenAI chat-completions server that renders a Script in OpenAI's wire format.

Streaming: ``chat.completion.chunk`` objects; the first delta carries the role, a refusal
comes as ``delta.refusal`` pieces (content null), tool calls as ``delta.tool_calls`` pieces
keyed by ``index`` (id, type and name on a call's first piece), then a finish chunk, then (only
when the request set ``stream_options.include_usage``) a chunk with ``choices: []`` and
``usage``, then ``data: [DONE]``. ``system_fingerprint`` is null, as OpenAI allows. Errors are
OpenAI's ``{"error": {message, type, param, code}}``.

Like OpenAI, the fake refuses (400) a message with a field the API does not define: reasoning
or signatures from another provider must not reach it. Reference:
https://platform.openai.com/docs/api-reference/chat/streaming
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes.faults import NO_FAULTS, Faults
from tests.fakes.http_fake import (
    Handler,
    Playlist,
    json_response,
    play,
    script_for,
    serve_routes,
    sse,
)
from tests.fakes.model_list_pages import DEFAULT_MODELS
from tests.fakes.script import FakeProvider, Script, ScriptUsage

FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}
ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
# The fields OpenAI defines on a message and on a tool call in a request.
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
TOOL_CALL_FIELDS = frozenset({"id", "type", "function"})
CONTEXT_MESSAGE = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in "
    "130000 tokens. Please reduce the length of the messages."
)


def usage_json(usage: ScriptUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
        },
    }


def error_body(script: Script) -> tuple[dict[str, Any], int]:
    if script.error_kind == "context_length":
        error = {
            "message": CONTEXT_MESSAGE,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
        return {"error": error}, 400
    kind, code = ERRORS.get(script.status, ("server_error", None))
    return {
        "error": {"message": script.error_message, "type": kind, "param": None, "code": code}
    }, script.status


def error_response(script: Script) -> web.Response:
    body, status = error_body(script)
    headers = {"retry-after": script.retry_after} if script.retry_after else None
    return json_response(body, status, headers)


def render_stream(script: Script, model: str, include_usage: bool) -> Playlist:
    base = {
        "id": "chatcmpl-fake1",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **usage_field}

    # As OpenAI starts a refusal: content null and an empty refusal.
    opening = (
        {"content": None, "refusal": ""} if script.refusal else {"content": "", "refusal": None}
    )
    playlist = Playlist(head=[sse(chunk({"role": "assistant", **opening}))])
    for piece in script.reasoning:  # as DeepSeek sends it: content null meanwhile
        playlist.content.append([sse(chunk({"content": None, script.reasoning_field: piece}))])
    for piece in script.refusal:
        playlist.content.append([sse(chunk({"content": None, "refusal": piece}))])
    for piece in () if script.refusal else script.text:
        if piece or script.odd:
            playlist.content.append([sse(chunk({"content": piece}))])
        else:
            playlist.content.append([sse(chunk({}))])
    for index, call in enumerate(script.tool_calls):
        first = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        playlist.content.append([sse(chunk({"tool_calls": [first]}))])
        for piece in call.arguments:
            part = {"index": index, "function": {"arguments": piece}}
            playlist.content.append([sse(chunk({"tool_calls": [part]}))])
    playlist.tail.append(sse(chunk({}, FINISH[script.finish])))
    if include_usage and script.usage is not None:
        playlist.tail.append(sse({**base, "choices": [], "usage": usage_json(script.usage)}))
    playlist.tail.append(sse("[DONE]"))
    failure = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    playlist.failure = [sse(failure)]
    return playlist


def render_whole(script: Script, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if script.refusal else script.full_text or None,
        "refusal": "".join(script.refusal) or None,
    }
    if script.reasoning:
        message[script.reasoning_field] = "".join(script.reasoning)
    if script.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for c in script.tool_calls
        ]
    reply: dict[str, Any] = {
        "id": "chatcmpl-fake1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH[script.finish],
            }
        ],
    }
    if script.usage is not None:
        reply["usage"] = usage_json(script.usage)
    return reply


def unknown_message_field(body: Any) -> str:
    """OpenAI's complaint about a message field it does not define, or ""."""
    for i, message in enumerate(body.get("messages") or ()):
        extra = sorted(set(message) - MESSAGE_FIELDS)
        for call in message.get("tool_calls") or ():
            extra += sorted(set(call) - TOOL_CALL_FIELDS)
        if extra:
            unexpected = f"({extra[0]!r} was unexpected) - 'messages.{i}'"
            return "Additional properties are not allowed " + unexpected
    return ""


async def chat_completions(
    request: web.Request, body: Any, fake: FakeProvider
) -> web.StreamResponse:
    script = script_for(request, fake)  # with the request's drawn fault
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return json_response(
            {
                "error": {
                    "message": "You didn't provide an API key.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            401,
        )
    if script.status != 200:
        return error_response(script)
    unknown = unknown_message_field(body)
    if unknown:
        error = {"message": unknown, "type": "invalid_request_error", "param": None, "code": None}
        return json_response({"error": error}, 400)
    model = body.get("model", "")
    if not body.get("stream"):
        return json_response(render_whole(script, model))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return await play(request, fake, render_stream(script, model, include_usage))


def model_list(models: Sequence[str]) -> Handler:
    """``GET /v1/models``: OpenAI's list, every model in one page (the API does not page it).
    Reference: https://platform.openai.com/docs/api-reference/models/list"""

    async def list_models(request: web.Request, body: Any, fake: FakeProvider) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            error = {"message": "You didn't provide an API key.", "type": "invalid_request_error"}
            return json_response({"error": {**error, "param": None, "code": None}}, 401)
        if fake.script.status != 200:
            return error_response(fake.script)
        data = [
            {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
            for model in models
        ]
        return json_response({"object": "list", "data": data})

    return list_models


@asynccontextmanager
async def serve(
    script: Script, *, models: Sequence[str] = DEFAULT_MODELS, faults: Faults = NO_FAULTS
) -> AsyncIterator[FakeProvider]:
    """``models``: what ``GET /v1/models`` lists; ``faults``: how it misbehaves
    (:mod:`tests.fakes.faults`; ``fake.inject`` switches them later)."""
    routes = [("/chat/completions", chat_completions), ("GET /models", model_list(models))]
    async with serve_routes(script, "/v1", routes, faults) as fake:
        yield fake
