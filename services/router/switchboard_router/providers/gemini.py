"""Google Gemini ``models/{model}:streamGenerateContent?alt=sse`` (Gemini API; Vertex AI sends
the same response shape).

Wire format: https://ai.google.dev/api/generate-content. This module builds the request and
runs the call; :mod:`.gemini_stream` reads the answer (SSE, or a whole JSON body),
:mod:`.gemini_errors` reads Google's error bodies, :mod:`.gemini_reasoning` maps the
``reasoning`` parameter and sends thought signatures back. The key goes in
``x-goog-api-key``, never in the URL. Tools and JSON output use the JSON Schema fields
(``parametersJsonSchema``, ``responseJsonSchema``), which take a schema as clients wrote it.
Image links are sent as ``fileData`` with the link as ``fileUri``; inline images as
``inlineData``. ``logprobs`` / ``top_logprobs`` are ``responseLogprobs`` / ``logprobs``
(0..20) and ``n`` is ``candidateCount``: the stream carries every candidate, by ``index``.

Prompt-cache marks (``TextPart.cache`` / ``ImagePart.cache``) are not sent: Gemini 2.5 and later
cache repeated prefixes implicitly and report the hits as ``cachedContentTokenCount`` (read by
:mod:`.gemini_stream`), with no per-part marks to take. Explicit caching (creating a
``cachedContents`` resource and naming it in ``cachedContent``) is a separate, stateful API
with storage billed per hour; it is out of scope here.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Message,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolChoiceMode,
    tool_name_for,
)
from switchboard_router.providers.base import Target
from switchboard_router.providers.gemini_errors import error_from_body
from switchboard_router.providers.gemini_reasoning import model_parts, thinking_config
from switchboard_router.providers.gemini_stream import StreamState
from switchboard_router.providers.streaming import UpstreamCall, stream_sse

__all__ = ["PARAMETERS", "GeminiAdapter", "StreamState", "build_body", "error_from_body"]

PARAMETERS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "tools",
        "tool_choice",
        "response_format",
        "structured_outputs",
        "reasoning",
        "logprobs",
        "top_logprobs",
        "n",
    }
)
GENERATION_FIELDS = {
    "max_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
    "n": "candidateCount",
}
IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".webp": "image/webp"}


def _content(message: Message) -> list[dict[str, Any]]:
    """A message's text and image parts."""
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
            continue
        inline = part.inline()
        if inline is not None:
            data = base64.b64encode(inline[1]).decode()
            parts.append({"inlineData": {"mimeType": inline[0], "data": data}})
        else:
            suffix = part.url.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
            mime = part.mime_type or IMAGE_TYPES.get("." + suffix, "image/jpeg")
            parts.append({"fileData": {"mimeType": mime, "fileUri": part.url}})
    return parts


def _parts(message: Message, messages: tuple[Message, ...], model: str) -> list[dict[str, Any]]:
    if message.role == Role.TOOL:
        try:
            result = orjson.loads(message.text)
        except orjson.JSONDecodeError:
            result = None
        response = result if isinstance(result, dict) else {"result": message.text}
        name = tool_name_for(messages, message.tool_call_id)
        return [{"functionResponse": {"name": name, "response": response}}]
    if message.role == Role.ASSISTANT:
        return model_parts(message, _content(message), model)
    return _content(message)


def _generation_config(request: CompletionRequest, model: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, wire in GENERATION_FIELDS.items():
        value = getattr(request, name)
        if value is not None:
            config[wire] = value
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.logprobs or request.top_logprobs is not None:
        config["responseLogprobs"] = True
        if request.top_logprobs is not None:
            config["logprobs"] = max(0, min(20, request.top_logprobs))
    fmt = request.response_format
    if fmt is not None and fmt.kind != ResponseFormatKind.TEXT:
        config["responseMimeType"] = "application/json"
        if fmt.kind == ResponseFormatKind.JSON_SCHEMA and fmt.schema is not None:
            config["responseJsonSchema"] = fmt.schema
    thinking = thinking_config(request, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def build_body(request: CompletionRequest, target: Target) -> dict[str, Any]:
    model = target.upstream_model
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == Role.SYSTEM:
            system.append({"text": message.text})
            continue
        role = "model" if message.role == Role.ASSISTANT else "user"
        parts = _parts(message, request.messages, model)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    body["generationConfig"] = _generation_config(request, model)
    if request.tools:
        declarations = [
            {"name": t.name, "description": t.description, "parametersJsonSchema": t.parameters}
            for t in request.tools
        ]
        body["tools"] = [{"functionDeclarations": declarations}]
    if request.tool_choice is not None:
        mode = {
            ToolChoiceMode.AUTO: "AUTO",
            ToolChoiceMode.NONE: "NONE",
            ToolChoiceMode.REQUIRED: "ANY",
            ToolChoiceMode.TOOL: "ANY",
        }[request.tool_choice.mode]
        calling: dict[str, Any] = {"mode": mode}
        if request.tool_choice.mode == ToolChoiceMode.TOOL:
            calling["allowedFunctionNames"] = [request.tool_choice.name]
        body["toolConfig"] = {"functionCallingConfig": calling}
    return body


class GeminiAdapter:
    """Adapter for the Gemini API (Google AI Studio)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def parameters(self, dialect: str) -> frozenset[str]:
        return PARAMETERS

    def requires_credential(self, dialect: str) -> bool:
        return True

    def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        return stream_sse(self._session, self, request, target, timeout=timeout)

    # What :func:`.streaming.stream_sse` asks of this provider.
    stray = True  # a stream can end with a raw JSON error object (see :mod:`.gemini_stream`)
    error_from_body = staticmethod(error_from_body)

    def call(self, request: CompletionRequest, target: Target) -> UpstreamCall:
        headers = {"x-goog-api-key": target.api_key.reveal()} if target.api_key else {}
        url = (
            f"{target.base_url.rstrip('/')}/models/{target.upstream_model}"
            ":streamGenerateContent?alt=sse"
        )
        return UpstreamCall(url, headers, build_body(request, target))

    def reader(self, provider: str) -> StreamState:
        return StreamState(provider)
