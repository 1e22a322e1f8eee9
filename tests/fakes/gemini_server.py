"""A fake Gemini API server that renders a Script in Gemini's wire format.

``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` streams whole
``GenerateContentResponse`` objects (no end marker: the connection closes after the chunk
with ``finishReason``); ``:generateContent`` answers at once. Function calls are sent whole.
``candidatesTokenCount`` excludes ``thoughtsTokenCount``. Errors are Google's
``{"error": {code, message, status, details}}`` with a ``RetryInfo`` detail on 429.
Reference: https://ai.google.dev/api/generate-content
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes.http_fake import Playlist, json_response, play, serve_routes, sse
from tests.fakes.script import FakeProvider, Script, ScriptUsage

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CONTEXT_MESSAGE = (
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
)


def usage_json(usage: ScriptUsage, partial: bool = False) -> dict[str, Any]:
    candidates = usage.completion_tokens - usage.reasoning_tokens
    out: dict[str, Any] = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": candidates // 2 if partial else candidates,
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt_tokens}],
    }
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


def error_json(status: int, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUSES.get(status, "INTERNAL"),
    }
    if status == 429:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
        ]
    return {"error": error}


def error_response(script: Script) -> web.Response:
    if script.error_kind == "context_length":
        return json_response(error_json(400, CONTEXT_MESSAGE), 400)
    headers = {"retry-after": script.retry_after} if script.retry_after else None
    return json_response(error_json(script.status, script.error_message), script.status, headers)


def response_json(
    model: str, parts: list[dict[str, Any]], finish: str | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": model,
        "responseId": "fake-response-1",
    }
    if usage is not None:
        out["usageMetadata"] = usage
    return out


def call_part(script: Script, index: int) -> dict[str, Any]:
    call = script.tool_calls[index]
    return {"functionCall": {"name": call.name, "args": json.loads(call.arguments_json)}}


def render_stream(script: Script, model: str) -> Playlist:
    # Gemini sends no SSE comments (google-genai's parser rejects them), so `odd` here means
    # CRLF line ends, events split across writes, empty text parts and partial usage.
    playlist = Playlist(newline="\r\n" if script.odd else "\n", keepalive=b"")
    partial = usage_json(script.usage, partial=True) if script.odd and script.usage else None
    for piece in script.text:
        playlist.content.append([sse(response_json(model, [{"text": piece}], None, partial))])
    for index in range(len(script.tool_calls)):
        playlist.content.append([sse(response_json(model, [call_part(script, index)], None, None))])
    usage = usage_json(script.usage) if script.usage is not None else None
    playlist.tail.append(sse(response_json(model, [{"text": ""}], FINISH[script.finish], usage)))
    playlist.failure = [sse(error_json(503, "The model is overloaded. Please try again later."))]
    return playlist


def render_whole(script: Script, model: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": script.full_text}] if script.text else []
    parts += [call_part(script, i) for i in range(len(script.tool_calls))]
    usage = usage_json(script.usage) if script.usage is not None else None
    return response_json(model, parts, FINISH[script.finish], usage)


async def generate(request: web.Request, body: Any, fake: FakeProvider) -> web.StreamResponse:
    script = fake.script
    if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
        message = "Method doesn't allow unregistered callers. Please use an API key."
        return json_response(error_json(403, message), 403)
    if script.status != 200:
        return error_response(script)
    name, _, method = request.match_info["call"].partition(":")
    if method == "generateContent":
        return json_response(render_whole(script, name))
    if method != "streamGenerateContent":
        return json_response(error_json(404, f"unknown method {method}"), 404)
    if request.query.get("alt") != "sse":
        return json_response(error_json(400, "this fake streams only with alt=sse"), 400)
    return await play(request, fake, render_stream(script, name))


@asynccontextmanager
async def serve(script: Script) -> AsyncIterator[FakeProvider]:
    async with serve_routes(script, "/v1beta", [("/models/{call}", generate)]) as fake:
        yield fake
