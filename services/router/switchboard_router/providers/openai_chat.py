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
    Role,
    TextDelta,
    UsageReport,
)
from switchboard_router.providers.base import (
    Target,
    UpstreamContextLengthExceeded,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_status,
    parse_retry_after,
)
from switchboard_router.providers.sse import SseEvent, iter_sse_batches

ROLES = {Role.SYSTEM: "system", Role.USER: "user", Role.ASSISTANT: "assistant", Role.TOOL: "tool"}

FINISH_REASONS = {
    "stop": Finish.STOP,
    "length": Finish.LENGTH,
    "tool_calls": Finish.TOOL_CALLS,
    "function_call": Finish.TOOL_CALLS,
    "content_filter": Finish.CONTENT_FILTER,
}

# Longest silence tolerated between two bytes of a stream.
READ_IDLE_SECONDS = 120.0


def build_body(request: CompletionRequest, target: Target) -> dict[str, Any]:
    messages = []
    for m in request.messages:
        item: dict[str, Any] = {"role": ROLES[m.role], "content": m.content}
        if m.name:
            item["name"] = m.name
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        messages.append(item)
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.user:
        body["user"] = request.user
    return body


def parse_usage(usage: dict[str, Any]) -> UsageReport:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return UsageReport(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def error_from_body(
    status: int, payload: bytes, provider_id: str, retry_after: float | None
) -> UpstreamError:
    message, code = f"provider returned HTTP {status}", ""
    try:
        error = json.loads(payload).get("error") or {}
        if isinstance(error, dict):
            message = str(error.get("message") or message)[:500]
            code = str(error.get("code") or "")
        elif isinstance(error, str):
            message = error[:500]
    except (ValueError, AttributeError):
        pass
    if code == "context_length_exceeded" or "maximum context length" in message:
        return UpstreamContextLengthExceeded(message, provider_id=provider_id, status=status)
    return error_for_status(status, message, provider_id=provider_id, retry_after=retry_after)


class OpenAIChatAdapter:
    """Adapter for OpenAI chat completions and every compatible server."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if target.api_key:
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        url = target.base_url.rstrip("/") + "/chat/completions"
        client_timeout = aiohttp.ClientTimeout(total=timeout, sock_read=READ_IDLE_SECONDS)
        provider = target.provider_id
        try:
            response = await self._session.post(
                url,
                data=orjson.dumps(build_body(request, target)),
                headers=headers,
                timeout=client_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"{provider} did not answer in time", provider_id=provider
            ) from None
        except aiohttp.ClientError as error:
            raise UpstreamUnavailable(
                f"could not reach {provider}: {type(error).__name__}", provider_id=provider
            ) from None
        done = False
        try:
            if response.status != 200:
                retry = parse_retry_after(response.headers.get("retry-after"))
                raise error_from_body(response.status, await response.read(), provider, retry)
            async for event in self._events(response, provider):
                yield event
            done = True
        except TimeoutError:
            raise UpstreamTimeout(f"{provider} stream timed out", provider_id=provider) from None
        except aiohttp.ClientError as error:
            raise UpstreamUnavailable(
                f"{provider} stream broke: {type(error).__name__}", provider_id=provider
            ) from None
        finally:
            if done:
                response.release()
            else:  # cancelled or failed: drop the connection, the upstream stops generating
                response.close()

    async def _events(
        self, response: aiohttp.ClientResponse, provider: str
    ) -> AsyncIterator[AdapterEvent]:
        finished = False
        async for batch in iter_sse_batches(response.content.iter_any()):
            parsed = parse_batch(batch, provider)
            if parsed.text:
                yield TextDelta("".join(parsed.text))
            for event in parsed.events:
                yield event
            finished = finished or parsed.finished
            if parsed.error is not None:
                raise parsed.error
            if parsed.done:
                return
        if not finished:
            raise UpstreamUnavailable(
                f"{provider} stream ended before the completion finished", provider_id=provider
            )


@dataclass(slots=True)
class ParsedBatch:
    """What one read of the stream carried: text in order, then finish and usage events."""

    text: list[str] = field(default_factory=list)
    events: list[AdapterEvent] = field(default_factory=list)
    finished: bool = False
    done: bool = False  # saw "data: [DONE]"
    error: UpstreamError | None = None  # raised after the text before it is relayed


def parse_batch(batch: list[SseEvent], provider: str) -> ParsedBatch:
    out = ParsedBatch()
    for sse in batch:
        if sse.data == "[DONE]":
            out.done = True
            return out
        try:
            chunk = orjson.loads(sse.data)
        except orjson.JSONDecodeError:
            out.error = UpstreamProtocolError(
                f"{provider} sent a chunk that is not JSON", provider_id=provider
            )
            return out
        if "error" in chunk:  # an error after the 200: the provider failed midway
            out.error = error_from_body(502, sse.data.encode(), provider, None)
            return out
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out.text.append(text)
            native = choice.get("finish_reason")
            if native:
                out.finished = True
                out.events.append(FinishEvent(FINISH_REASONS.get(native, Finish.STOP), native))
        usage = chunk.get("usage")
        if usage:
            out.events.append(parse_usage(usage))
    return out
