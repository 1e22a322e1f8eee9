"""OpenAI chat completions (``POST {base}/chat/completions``), streaming with SSE.

Serves OpenAI and every OpenAI-compatible server (vLLM, Ollama, Together, Groq, ...).
Wire format: https://platform.openai.com/docs/api-reference/chat/streaming
"""

from __future__ import annotations

import json
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
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    UsageReport,
)
from switchboard_router.providers.base import (
    Target,
    UpstreamError,
    UpstreamProtocolError,
    error_for_status,
)
from switchboard_router.providers.http import ended_early, open_sse
from switchboard_router.providers.openai_dialects import Dialect, dialect_for
from switchboard_router.providers.sse import SseEvent

ROLES = {Role.SYSTEM: "system", Role.USER: "user", Role.ASSISTANT: "assistant", Role.TOOL: "tool"}

FINISH_REASONS = {
    "stop": Finish.STOP,
    "length": Finish.LENGTH,
    "tool_calls": Finish.TOOL_CALLS,
    "function_call": Finish.TOOL_CALLS,
    "content_filter": Finish.CONTENT_FILTER,
}


def _content(message: Message) -> str | list[dict[str, Any]] | None:
    """A plain string for text-only messages (every host takes that), else content parts."""
    if not message.has_image:
        text = message.text
        return text if text or not message.tool_calls else None
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        else:
            image: dict[str, Any] = {"url": part.as_url()}
            if part.detail:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
    return parts


def _message(message: Message) -> dict[str, Any]:
    item: dict[str, Any] = {"role": ROLES[message.role], "content": _content(message)}
    if message.name:
        item["name"] = message.name
    if message.tool_call_id:
        item["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        item["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return item


def _tool_choice(choice: ToolChoice, dialect: Dialect) -> str | dict[str, Any]:
    if choice.mode == ToolChoiceMode.TOOL:
        return {"type": "function", "function": {"name": choice.name}}
    if choice.mode == ToolChoiceMode.REQUIRED:
        return dialect.required_tool_choice
    return choice.mode.value


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.kind != ResponseFormatKind.JSON_SCHEMA:
        return {"type": fmt.kind.value}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema or {}}
    if fmt.strict:
        schema["strict"] = True
    return {"type": "json_schema", "json_schema": schema}


def build_body(request: CompletionRequest, target: Target) -> dict[str, Any]:
    """The chat-completions body; the relay has already unset what the host cannot take."""
    dialect = dialect_for(target.dialect)
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
    }
    if dialect.ask_stream_usage:
        body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body[dialect.max_tokens_field] = request.max_tokens
    if request.seed is not None:
        body[dialect.seed_field] = request.seed
    for name in ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice, dialect)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    if request.user:
        body["user"] = request.user
    return body


def parse_usage(usage: dict[str, Any]) -> UsageReport:
    """OpenAI's usage object, and the fields compatible hosts add (DeepSeek's cache hits)."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0
    return UsageReport(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(cached),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        cache_write_tokens=int(prompt_details.get("cache_write_tokens") or 0),
    )


def error_from_body(
    status: int, payload: bytes, provider_id: str, retry_after: float | None
) -> UpstreamError:
    message, code = "(no error message)", ""
    try:
        error = json.loads(payload).get("error") or {}
        if isinstance(error, dict):
            message = str(error.get("message") or message)[:500]
            code = str(error.get("code") or "")
        elif isinstance(error, str):
            message = error[:500]
    except (ValueError, AttributeError):
        pass
    return error_for_status(
        status,
        message,
        provider_id=provider_id,
        retry_after=retry_after,
        context_length=code == "context_length_exceeded" or "maximum context length" in message,
    )


class OpenAIChatAdapter:
    """Adapter for OpenAI chat completions and every compatible server."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def parameters(self, dialect: str) -> frozenset[str]:
        return dialect_for(dialect).parameters

    def requires_credential(self, dialect: str) -> bool:
        return dialect_for(dialect).key_required

    async def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        headers = {}
        if target.api_key and dialect_for(target.dialect).auth == "bearer":
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        provider = target.provider_id
        async with open_sse(
            self._session,
            target.base_url.rstrip("/") + "/chat/completions",
            build_body(request, target),
            headers,
            provider=provider,
            timeout=timeout,
            error_from_body=error_from_body,
        ) as upstream:
            finished = False
            async for batch in upstream.batches():
                parsed = parse_batch(batch, provider)
                for event in parsed.events:
                    yield event
                finished = finished or parsed.finished
                if parsed.error is not None:
                    raise parsed.error
                if parsed.done:
                    break
            if not finished:
                raise ended_early(provider)
            upstream.complete()


@dataclass(slots=True)
class ParsedBatch:
    """What one read of the stream carried, in order; adjacent text (or reasoning) joined
    into one delta."""

    events: list[AdapterEvent] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # text not yet in ``events``
    reasoning: bool = False  # ``text`` holds reasoning, not answer text
    finished: bool = False
    done: bool = False  # saw "data: [DONE]"
    error: UpstreamError | None = None  # raised after the events before it are relayed

    def add_text(self, text: str, *, reasoning: bool = False) -> None:
        if reasoning != self.reasoning:
            self.flush_text()
            self.reasoning = reasoning
        self.text.append(text)

    def flush_text(self) -> None:
        if self.text:
            joined = "".join(self.text)
            self.events.append(ReasoningDelta(joined) if self.reasoning else TextDelta(joined))
            self.text.clear()

    def add(self, event: AdapterEvent) -> None:
        self.flush_text()
        self.events.append(event)


def parse_batch(batch: list[SseEvent], provider: str) -> ParsedBatch:
    out = ParsedBatch()
    for sse in batch:
        if sse.data == "[DONE]":
            out.done = True
            break
        try:
            chunk = orjson.loads(sse.data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            out.error = UpstreamProtocolError(
                f"{provider} sent a chunk that is not a JSON object", provider_id=provider
            )
            break
        if chunk.get("error"):  # an error after the 200: the provider failed midway
            out.error = error_from_body(502, sse.data.encode(), provider, None)
            break
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            # DeepSeek and vLLM send reasoning as reasoning_content, Groq and others as
            # reasoning (a string; OpenRouter's structured reasoning_details are not read).
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if thought and isinstance(thought, str):
                out.add_text(thought, reasoning=True)
            text = delta.get("content")
            if text:
                out.add_text(text)
            for call in delta.get("tool_calls") or ():
                out.add(_tool_call_delta(call))
            native = choice.get("finish_reason")
            if native:
                out.finished = True
                out.add(FinishEvent(FINISH_REASONS.get(native, Finish.STOP), native))
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if usage:
            out.add(parse_usage(usage))
    out.flush_text()
    return out


def _tool_call_delta(call: dict[str, Any]) -> ToolCallDelta:
    function = call.get("function") or {}
    return ToolCallDelta(
        index=int(call.get("index") or 0),
        id=call.get("id") or "",
        name=function.get("name") or "",
        arguments=function.get("arguments") or "",
    )
