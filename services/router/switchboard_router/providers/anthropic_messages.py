"""Anthropic messages (``POST {base}/messages``), streaming with SSE.

Wire format: https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming. A stream is ``message_start``
(input usage), then per content block ``content_block_start`` / ``content_block_delta``
(``text_delta``, ``input_json_delta`` for tool arguments, ``thinking_delta``) /
``content_block_stop``, then ``message_delta`` (stop reason, cumulative output usage) and
``message_stop``; ``ping`` may come anywhere and ``error`` ends a stream that failed.
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
from switchboard_router.providers.sse import SseEvent

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
PARAMETERS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
FINISH_REASONS = {
    "end_turn": Finish.STOP,
    "stop_sequence": Finish.STOP,
    "pause_turn": Finish.STOP,
    "max_tokens": Finish.LENGTH,
    "model_context_window_exceeded": Finish.LENGTH,
    "tool_use": Finish.TOOL_CALLS,
    "refusal": Finish.CONTENT_FILTER,
}
# Error types of error events and bodies, by the HTTP status Anthropic uses for them.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if message.role == Role.TOOL:
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text}
        ]
    for part in message.parts:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
            continue
        inline = part.inline()
        if inline is not None:
            source = {
                "type": "base64",
                "media_type": inline[0],
                "data": base64.b64encode(inline[1]).decode(),
            }
        else:
            source = {"type": "url", "url": part.url}
        blocks.append({"type": "image", "source": source})
    for call in message.tool_calls:
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


def _messages(request: CompletionRequest) -> tuple[list[dict[str, Any]], str]:
    """Turns with consecutive same-role messages merged (tool results are user turns)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == Role.SYSTEM:
            system.append(message.text)
            continue
        role = "assistant" if message.role == Role.ASSISTANT else "user"
        blocks = _blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns, "\n\n".join(system)


def _tool_choice(choice: ToolChoice, parallel: bool | None) -> dict[str, Any]:
    kinds = {
        ToolChoiceMode.AUTO: "auto",
        ToolChoiceMode.NONE: "none",
        ToolChoiceMode.REQUIRED: "any",
        ToolChoiceMode.TOOL: "tool",
    }
    out: dict[str, Any] = {"type": kinds[choice.mode]}
    if choice.mode == ToolChoiceMode.TOOL:
        out["name"] = choice.name
    if parallel is False and choice.mode != ToolChoiceMode.NONE:
        out["disable_parallel_tool_use"] = True
    return out


def build_body(request: CompletionRequest, target: Target) -> dict[str, Any]:
    messages, system = _messages(request)
    max_tokens = request.max_tokens or target.max_completion_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
    }
    if system:
        body["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        choice = request.tool_choice or ToolChoice(ToolChoiceMode.AUTO)
        if request.tool_choice is not None or request.parallel_tool_calls is False:
            body["tool_choice"] = _tool_choice(choice, request.parallel_tool_calls)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return body


def error_from_body(
    status: int, payload: bytes, provider_id: str, retry_after: float | None
) -> UpstreamError:
    message = "(no error message)"
    try:
        error = orjson.loads(payload).get("error") or {}
        message = str(error.get("message") or message)[:500]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return error_for_status(
        status,
        message,
        provider_id=provider_id,
        retry_after=retry_after,
        context_length=status == 400 and "prompt is too long" in message,
    )


class AnthropicMessagesAdapter:
    """Adapter for Anthropic's messages API."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def parameters(self, dialect: str) -> frozenset[str]:
        return PARAMETERS

    def requires_credential(self, dialect: str) -> bool:
        return True

    async def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        headers = {"anthropic-version": API_VERSION}
        if target.api_key:
            headers["x-api-key"] = target.api_key.reveal()
        provider = target.provider_id
        async with open_sse(
            self._session,
            target.base_url.rstrip("/") + "/messages",
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
                if state.stopped:
                    break
            if not state.stopped:
                raise ended_early(provider)
            for event in state.final():
                yield event
            upstream.complete()


@dataclass
class StreamState:
    """What the stream has said so far; :meth:`feed` turns one read's events into ours."""

    provider: str
    input_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output_tokens: int = 0
    stop_reason: str = ""
    stopped: bool = False
    error: UpstreamError | None = None
    tool_index: dict[int, int] = field(default_factory=dict)  # content block -> tool ordinal

    def feed(self, batch: list[SseEvent]) -> list[AdapterEvent]:
        out: list[AdapterEvent] = []
        text: list[str] = []

        def flush() -> None:
            if text:
                out.append(TextDelta("".join(text)))
                text.clear()

        for sse in batch:
            kind = sse.event
            if kind == "ping":
                continue
            try:
                data = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                self.error = UpstreamProtocolError(
                    f"{self.provider} sent an event that is not JSON", provider_id=self.provider
                )
                break
            kind = data.get("type", kind) if isinstance(data, dict) else kind
            if kind == "content_block_delta":
                delta = data.get("delta") or {}
                if delta.get("type") == "text_delta":
                    if delta.get("text"):
                        text.append(delta["text"])
                elif delta.get("type") == "input_json_delta":
                    ordinal = self.tool_index.get(int(data.get("index", 0)))
                    if ordinal is not None and delta.get("partial_json"):
                        flush()
                        out.append(ToolCallDelta(ordinal, arguments=delta["partial_json"]))
            elif kind == "content_block_start":
                block = data.get("content_block") or {}
                if block.get("type") == "tool_use":
                    flush()
                    ordinal = len(self.tool_index)
                    self.tool_index[int(data.get("index", 0))] = ordinal
                    out.append(
                        ToolCallDelta(
                            ordinal, id=block.get("id") or "", name=block.get("name") or ""
                        )
                    )
            elif kind == "message_start":
                self._usage((data.get("message") or {}).get("usage") or {})
                out.append(
                    PromptUsage(
                        self.input_tokens + self.cache_read + self.cache_write,
                        cached_tokens=self.cache_read,
                        cache_write_tokens=self.cache_write,
                    )
                )
            elif kind == "message_delta":
                self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
                self._usage(data.get("usage") or {})
            elif kind == "message_stop":
                self.stopped = True
                break
            elif kind == "error":
                error = data.get("error") or {}
                status = ERROR_STATUS.get(str(error.get("type")), 500)
                self.error = error_from_body(status, orjson.dumps(data), self.provider, None)
                break
        flush()
        return out

    def _usage(self, usage: dict[str, Any]) -> None:
        self.input_tokens = int(usage.get("input_tokens") or self.input_tokens)
        self.cache_read = int(usage.get("cache_read_input_tokens") or self.cache_read)
        self.cache_write = int(usage.get("cache_creation_input_tokens") or self.cache_write)
        self.output_tokens = int(usage.get("output_tokens") or self.output_tokens)

    def final(self) -> list[AdapterEvent]:
        reason = FINISH_REASONS.get(self.stop_reason, Finish.STOP)
        usage = UsageReport(
            prompt_tokens=self.input_tokens + self.cache_read + self.cache_write,
            completion_tokens=self.output_tokens,
            cached_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
        )
        return [usage, FinishEvent(reason, self.stop_reason)]
