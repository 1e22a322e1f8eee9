"""Google Gemini ``models/{model}:streamGenerateContent?alt=sse``.

Wire format: https://ai.google.dev/api/generate-content. Every SSE event is a whole
``GenerateContentResponse`` (candidates with content parts, ``finishReason`` on the last,
cumulative ``usageMetadata``); the stream has no end marker, so it is complete when the
connection ends after a finish reason (or a ``promptFeedback.blockReason``). Function calls
arrive whole, one ``functionCall`` part each. The key goes in ``x-goog-api-key``, never in the
URL. Tools and JSON output use the JSON Schema fields (``parametersJsonSchema``,
``responseJsonSchema``), which take a schema as clients wrote it. Image links are sent as
``fileData`` with the link as ``fileUri``; inline images as ``inlineData``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    PromptUsage,
    ResponseFormatKind,
    Role,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolChoiceMode,
    UsageReport,
    tool_name_for,
)
from switchboard_router.providers.base import (
    Target,
    UpstreamError,
    UpstreamProtocolError,
    error_for_status,
    parse_retry_after,
)
from switchboard_router.providers.http import ended_early, open_sse
from switchboard_router.providers.sse import SseEvent

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
    }
)
FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
GENERATION_FIELDS = {
    "max_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
}
IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".webp": "image/webp"}


def _parts(message: Message, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    if message.role == Role.TOOL:
        try:
            result = orjson.loads(message.text)
        except orjson.JSONDecodeError:
            result = None
        response = result if isinstance(result, dict) else {"result": message.text}
        name = tool_name_for(messages, message.tool_call_id)
        return [{"functionResponse": {"name": name, "response": response}}]
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
    for call in message.tool_calls:
        try:
            args = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            args = {}
        parts.append({"functionCall": {"name": call.name, "args": args}})
    return parts


def build_body(request: CompletionRequest, target: Target) -> dict[str, Any]:
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == Role.SYSTEM:
            system.append({"text": message.text})
            continue
        role = "model" if message.role == Role.ASSISTANT else "user"
        parts = _parts(message, request.messages)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    for name, wire in GENERATION_FIELDS.items():
        value = getattr(request, name)
        if value is not None:
            config[wire] = value
    if request.stop:
        config["stopSequences"] = list(request.stop)
    fmt = request.response_format
    if fmt is not None and fmt.kind != ResponseFormatKind.TEXT:
        config["responseMimeType"] = "application/json"
        if fmt.kind == ResponseFormatKind.JSON_SCHEMA and fmt.schema is not None:
            config["responseJsonSchema"] = fmt.schema
    body["generationConfig"] = config
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


def _retry_delay(error: dict[str, Any]) -> float | None:
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            return parse_retry_after(str(detail.get("retryDelay", "")).removesuffix("s"))
    return None


def error_from_body(
    status: int, payload: bytes, provider_id: str, retry_after: float | None
) -> UpstreamError:
    message = "(no error message)"
    try:
        body = orjson.loads(payload)
        if isinstance(body, list) and body:
            body = body[0]
        error = body.get("error") or {}
        message = str(error.get("message") or message)[:500]
        status = int(error.get("code") or status)
        retry_after = retry_after if retry_after is not None else _retry_delay(error)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        pass
    return error_for_status(
        status,
        message,
        provider_id=provider_id,
        retry_after=retry_after,
        context_length=status == 400 and "input token count" in message and "exceeds" in message,
    )


class GeminiAdapter:
    """Adapter for the Gemini API (Google AI Studio)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def parameters(self, dialect: str) -> frozenset[str]:
        return PARAMETERS

    def requires_credential(self, dialect: str) -> bool:
        return True

    async def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        headers = {"x-goog-api-key": target.api_key.reveal()} if target.api_key else {}
        provider = target.provider_id
        async with open_sse(
            self._session,
            f"{target.base_url.rstrip('/')}/models/{target.upstream_model}"
            ":streamGenerateContent?alt=sse",
            build_body(request, target),
            headers,
            provider=provider,
            timeout=timeout,
            error_from_body=error_from_body,
        ) as upstream:
            state = StreamState(provider)
            async for batch in upstream.batches():
                for event in state.feed(batch):
                    yield event
                if state.error is not None:
                    raise state.error
            if not state.native_finish:
                raise ended_early(provider)
            for event in state.final():
                yield event
            upstream.complete()


@dataclass
class StreamState:
    provider: str
    usage: dict[str, Any] = field(default_factory=dict)
    native_finish: str = ""
    blocked: bool = False
    calls: int = 0
    error: UpstreamError | None = None
    prompt_reported: bool = False

    def feed(self, batch: list[SseEvent]) -> list[AdapterEvent]:
        out: list[AdapterEvent] = []
        text: list[str] = []
        for sse in batch:
            try:
                chunk = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                chunk = None
            if not isinstance(chunk, dict):
                self.error = UpstreamProtocolError(
                    f"{self.provider} sent an event that is not a JSON object",
                    provider_id=self.provider,
                )
                break
            if chunk.get("error"):
                self.error = error_from_body(500, sse.data.encode(), self.provider, None)
                break
            self.usage = chunk.get("usageMetadata") or self.usage
            if self.usage and not self.prompt_reported and "promptTokenCount" in self.usage:
                self.prompt_reported = True
                out.append(
                    PromptUsage(
                        int(self.usage.get("promptTokenCount") or 0)
                        + int(self.usage.get("toolUsePromptTokenCount") or 0),
                        cached_tokens=int(self.usage.get("cachedContentTokenCount") or 0),
                    )
                )
            block = (chunk.get("promptFeedback") or {}).get("blockReason")
            if block:
                self.native_finish, self.blocked = str(block), True
            for candidate in (chunk.get("candidates") or ())[:1]:
                for part in (candidate.get("content") or {}).get("parts") or ():
                    if part.get("thought"):
                        continue
                    if part.get("text"):
                        text.append(part["text"])
                    call = part.get("functionCall")
                    if call:
                        if text:
                            out.append(TextDelta("".join(text)))
                            text.clear()
                        out.append(self._call(call))
                if candidate.get("finishReason"):
                    self.native_finish = str(candidate["finishReason"])
        if text:
            out.append(TextDelta("".join(text)))
        return out

    def _call(self, call: dict[str, Any]) -> ToolCallDelta:
        index = self.calls
        self.calls += 1
        return ToolCallDelta(
            index,
            id=str(call.get("id") or f"call_{index}"),
            name=str(call.get("name") or ""),
            arguments=orjson.dumps(call.get("args") or {}).decode(),
        )

    def final(self) -> list[AdapterEvent]:
        out: list[AdapterEvent] = []
        if self.usage:
            u = self.usage
            thoughts = int(u.get("thoughtsTokenCount") or 0)
            out.append(
                UsageReport(
                    prompt_tokens=int(u.get("promptTokenCount") or 0)
                    + int(u.get("toolUsePromptTokenCount") or 0),
                    completion_tokens=int(u.get("candidatesTokenCount") or 0) + thoughts,
                    cached_tokens=int(u.get("cachedContentTokenCount") or 0),
                    reasoning_tokens=thoughts,
                )
            )
        native = self.native_finish
        if self.blocked or native in FILTERED:
            reason = Finish.CONTENT_FILTER
        elif native == "MAX_TOKENS":
            reason = Finish.LENGTH
        elif native == "MALFORMED_FUNCTION_CALL":
            reason = Finish.ERROR
        elif self.calls:
            reason = Finish.TOOL_CALLS
        else:
            reason = Finish.STOP
        out.append(FinishEvent(reason, native))
        return out
