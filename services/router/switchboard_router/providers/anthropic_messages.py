"""Anthropic messages (``POST {base}/messages``), streaming with SSE.

The adapter: it sends the body :mod:`.anthropic_body` builds and reads the answer with
:mod:`.anthropic_stream`, a stream of events or, from a host that ignores ``stream: true``, one
whole ``Message`` body (``200 application/json``). Wire format:
https://docs.claude.com/en/api/messages and
https://docs.claude.com/en/docs/build-with-claude/streaming.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from switchboard_router.canonical import AdapterEvent, CompletionRequest
from switchboard_router.providers.anthropic_body import DEFAULT_MAX_TOKENS, build_body
from switchboard_router.providers.anthropic_stream import (
    ERROR_STATUS,
    FINISH_REASONS,
    StreamState,
    error_from_body,
)
from switchboard_router.providers.base import Target
from switchboard_router.providers.streaming import UpstreamCall, stream_sse

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ERROR_STATUS",
    "FINISH_REASONS",
    "PARAMETERS",
    "AnthropicMessagesAdapter",
    "StreamState",
    "build_body",
    "error_from_body",
]

API_VERSION = "2023-06-01"
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
        "reasoning",
    }
)


class AnthropicMessagesAdapter:
    """Adapter for Anthropic's messages API."""

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
    stray = False
    error_from_body = staticmethod(error_from_body)

    def call(self, request: CompletionRequest, target: Target) -> UpstreamCall:
        headers = {"anthropic-version": API_VERSION}
        if target.api_key:
            headers["x-api-key"] = target.api_key.reveal()
        url = target.base_url.rstrip("/") + "/messages"
        return UpstreamCall(url, headers, build_body(request, target))

    def reader(self, provider: str) -> StreamState:
        return StreamState(provider)
