"""A fake Gemini API server that renders a Script in Gemini's wire format.

``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` streams whole
``GenerateContentResponse`` objects (no end marker: the connection closes after the chunk
with ``finishReason``); ``:generateContent`` answers at once. Function calls are sent whole.
``candidatesTokenCount`` excludes ``thoughtsTokenCount``. Errors are Google's
``{"error": {code, message, status, details}}`` with a ``RetryInfo`` detail on 429.

With ``Script.signed_reasoning``, ``Script.reasoning`` streams as thought-summary parts
(``thought: true``) and the fake signs the turn as Gemini 3 does: a ``thoughtSignature`` on the
first ``functionCall`` part, or on the last text part when there is no call. A later request
whose history holds a model ``functionCall`` that should carry that signature (the first call
of a model turn) but does not is refused with Gemini's real 400 (a documented placeholder
signature is accepted, as Gemini accepts it).
Reference: https://ai.google.dev/api/generate-content,
https://ai.google.dev/gemini-api/docs/thought-signatures
"""

from __future__ import annotations

import json
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
from tests.fakes.model_list_pages import DEFAULT_MODELS, page_after, requested_size
from tests.fakes.script import FakeProvider, Script, ScriptUsage, signature_for

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
# Gemini's refusal of a history without the signature (BigPizzaV3/CodexPlusPlus#332).
MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for"
    " tools to work correctly, and missing thought_signature may lead to degraded model"
    " performance. Additional data, function call `default_api:{name}` , position {position}."
    " Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more"
    " details."
)
PLACEHOLDER_SIGNATURES = {
    "skip_thought_signature_validator",
    "context_engineering_is_the_way_to_go",
}


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


def turn_signature(script: Script) -> str:
    """The signature this fake gives a turn: over its reasoning, as Gemini signs its thoughts."""
    return signature_for("".join(script.reasoning))


def call_part(script: Script, index: int) -> dict[str, Any]:
    call = script.tool_calls[index]
    part: dict[str, Any] = {
        "functionCall": {"name": call.name, "args": json.loads(call.arguments_json)}
    }
    if script.signed_reasoning and index == 0:
        part["thoughtSignature"] = turn_signature(script)
    return part


def text_parts(script: Script) -> list[dict[str, Any]]:
    """One text part per text chunk; with signed reasoning and no call, the last is signed."""
    parts: list[dict[str, Any]] = [{"text": piece} for piece in script.text]
    if script.signed_reasoning and not script.tool_calls and parts:
        parts[-1]["thoughtSignature"] = turn_signature(script)
    return parts


def thought_parts(script: Script) -> list[dict[str, Any]]:
    if not script.signed_reasoning:
        return []
    return [{"text": piece, "thought": True} for piece in script.reasoning]


def render_stream(script: Script, model: str) -> Playlist:
    # Gemini sends no SSE comments (google-genai's parser rejects them), so `odd` here means
    # CRLF line ends, events split across writes, empty text parts and partial usage.
    playlist = Playlist(newline="\r\n" if script.odd else "\n", keepalive=b"")
    partial = usage_json(script.usage, partial=True) if script.odd and script.usage else None
    for part in thought_parts(script):
        playlist.head.append(sse(response_json(model, [part], None, partial)))
    for part in text_parts(script):
        playlist.content.append([sse(response_json(model, [part], None, partial))])
    for index in range(len(script.tool_calls)):
        playlist.content.append([sse(response_json(model, [call_part(script, index)], None, None))])
    usage = usage_json(script.usage) if script.usage is not None else None
    last: dict[str, Any] = {"text": ""}
    if script.signed_reasoning and not script.tool_calls and not script.text:
        last["thoughtSignature"] = turn_signature(script)
    playlist.tail.append(sse(response_json(model, [last], FINISH[script.finish], usage)))
    playlist.failure = [sse(error_json(503, "The model is overloaded. Please try again later."))]
    return playlist


def render_whole(script: Script, model: str) -> dict[str, Any]:
    parts = thought_parts(script)
    if script.text:
        text: dict[str, Any] = {"text": script.full_text}
        if script.signed_reasoning and not script.tool_calls:
            text["thoughtSignature"] = turn_signature(script)
        parts.append(text)
    parts += [call_part(script, i) for i in range(len(script.tool_calls))]
    usage = usage_json(script.usage) if script.usage is not None else None
    return response_json(model, parts, FINISH[script.finish], usage)


def unsigned_call(script: Script, body: Any) -> web.Response | None:
    """Gemini's 400 when the first function call of a model turn in the history lacks the
    signature this fake issued; None when the history is fine."""
    contents = body.get("contents") if isinstance(body, dict) else None
    for position, content in enumerate(contents or (), start=1):
        if not isinstance(content, dict) or content.get("role") != "model":
            continue
        calls = [p for p in content.get("parts") or () if "functionCall" in p]
        if not calls:
            continue
        signature = calls[0].get("thoughtSignature")
        if signature == turn_signature(script) or signature in PLACEHOLDER_SIGNATURES:
            continue
        name = calls[0]["functionCall"].get("name", "")
        message = MISSING_SIGNATURE.format(name=name, position=position)
        return json_response(error_json(400, message), 400)
    return None


async def generate(request: web.Request, body: Any, fake: FakeProvider) -> web.StreamResponse:
    script = script_for(request, fake)  # with the request's drawn fault
    if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
        message = "Method doesn't allow unregistered callers. Please use an API key."
        return json_response(error_json(403, message), 403)
    if script.status != 200:
        return error_response(script)
    refusal = unsigned_call(script, body) if script.signed_reasoning else None
    if refusal is not None:
        return refusal
    name, _, method = request.match_info["call"].partition(":")
    if method == "generateContent":
        return json_response(render_whole(script, name))
    if method != "streamGenerateContent":
        return json_response(error_json(404, f"unknown method {method}"), 404)
    if request.query.get("alt") != "sse":
        return json_response(error_json(400, "this fake streams only with alt=sse"), 400)
    return await play(request, fake, render_stream(script, name))


def model_list(models: Sequence[str], page_size: int) -> Handler:
    """``GET /v1beta/models?pageSize=&pageToken=``: Gemini's paged list (``pageSize`` default
    50, at most 1000; at most ``page_size`` here), names ``models/<id>``, ``nextPageToken``
    left out on the last page. Reference: https://ai.google.dev/api/models#method:-models.list"""

    async def list_models(request: web.Request, body: Any, fake: FakeProvider) -> web.Response:
        if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            message = "Method doesn't allow unregistered callers. Please use an API key."
            return json_response(error_json(403, message), 403)
        if fake.script.status != 200:
            return error_response(fake.script)
        size = requested_size(request.query.get("pageSize"), 50, min(1000, page_size))
        page, more = page_after(models, request.query.get("pageToken", ""), size)
        listed = [
            {
                "name": f"models/{model}",
                "version": "001",
                "displayName": model,
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for model in page
        ]
        reply: dict[str, Any] = {"models": listed}
        if more:
            reply["nextPageToken"] = page[-1]
        return json_response(reply)

    return list_models


@asynccontextmanager
async def serve(
    script: Script,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    page_size: int = 1000,
    faults: Faults = NO_FAULTS,
) -> AsyncIterator[FakeProvider]:
    """``models``: what ``GET /v1beta/models`` lists, at most ``page_size`` a page; ``faults``:
    how it misbehaves (:mod:`tests.fakes.faults`; ``fake.inject`` switches them later)."""
    routes = [("/models/{call}", generate), ("GET /models", model_list(models, page_size))]
    async with serve_routes(script, "/v1beta", routes, faults) as fake:
        yield fake
