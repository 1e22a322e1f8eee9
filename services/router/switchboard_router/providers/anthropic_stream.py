"""Anthropic's answer, streamed or whole, turned into canonical events.

Wire format: https://docs.claude.com/en/docs/build-with-claude/streaming. A stream is
``message_start`` (the message without content; usage with the prompt's counts), then per
content block ``content_block_start`` / ``content_block_delta`` / ``content_block_stop``, then
``message_delta`` (stop reason and details, *cumulative* usage) and ``message_stop``; ``ping``
may come anywhere and ``error`` ends a stream that failed (the connection then closes without
``message_stop``). A whole (non-streamed) ``Message`` body is read as the same events
(:func:`message_events`).

Content blocks, by ``content_block.type``:

- ``text``: ``text_delta`` pieces; ``citations_delta`` adds one citation to the block.
- ``thinking``: ``thinking_delta`` pieces, then one ``signature_delta`` just before the block
  stops; ``redacted_thinking`` carries its encrypted ``data`` whole at ``content_block_start``.
  Both become :class:`ReasoningDelta` with ``format=ANTHROPIC_REASONING`` and the content block
  index as ``block``: the client must send them back verbatim before the tool calls of the
  turn (extended thinking with tool use).
- ``tool_use``: ``input_json_delta`` pieces of the arguments. A call without arguments sends
  ``input: {}`` and no delta (or one empty delta): its arguments are ``"{}"``.
- ``server_tool_use`` / ``mcp_tool_use`` and ``*_tool_result`` blocks: tools Anthropic ran
  itself (web search, web fetch, code execution). They are no calls for the client: they pass
  through as provider metadata.

Usage fields are read by presence, never ``x or previous``: a later event's value replaces an
earlier one's even when it is 0, and a stream that reported no usage at all yields no
:class:`UsageReport` (the relay estimates). ``output_tokens_details.thinking_tokens`` is the
reasoning share of ``output_tokens``. ``cache_creation_input_tokens`` are the prompt's cache
writes, of which ``cache_creation.ephemeral_1h_input_tokens`` were written for an hour (the rest,
``ephemeral_5m_input_tokens``, for five minutes; priced apart); without the total the two
durations add up to it. ``server_tool_use.web_search_requests`` counts the web searches
Anthropic bills per search (https://docs.claude.com/en/api/messages, ``Usage``).

What the provider said beyond text and usage comes as one :class:`ProviderMetadata` before the
finish, keyed ``stop_sequence`` (the stop sequence that matched), ``stop_details`` (refusal
category and explanation), ``container``, ``context_management``, ``citations``,
``server_tool_use``, ``server_tool_results`` and ``server_tool_usage`` (counts of server tool
requests from ``usage.server_tool_use``), each only when the provider sent a non-null value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    AdapterEvent,
    Finish,
    FinishEvent,
    PromptUsage,
    ProviderMetadata,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from switchboard_router.providers.base import (
    UpstreamError,
    UpstreamProtocolError,
    ended_early,
    error_for_status,
)
from switchboard_router.providers.error_body import read_error_body
from switchboard_router.providers.sse import SseEvent

FINISH_REASONS = {
    "end_turn": Finish.STOP,
    "stop_sequence": Finish.STOP,
    "pause_turn": Finish.STOP,  # a server tool loop paused: send the turn back to go on
    "max_tokens": Finish.LENGTH,
    "model_context_window_exceeded": Finish.LENGTH,
    "tool_use": Finish.TOOL_CALLS,
    "refusal": Finish.CONTENT_FILTER,
}
# Error types of error events and bodies, by the HTTP status Anthropic uses for them.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
SERVER_CALLS = frozenset({"server_tool_use", "mcp_tool_use"})
# Top-level message fields passed through as metadata, when not null.
MESSAGE_FIELDS = ("stop_sequence", "stop_details", "container")
USAGE_FIELDS = {
    "input_tokens": "input",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_write",
    "output_tokens": "output",
}
# usage.cache_creation: the cache writes by duration.
CACHE_CREATION_FIELDS = {
    "ephemeral_5m_input_tokens": "cache_write_5m",
    "ephemeral_1h_input_tokens": "cache_write_1h",
}


def error_from_body(
    status: int, payload: bytes, provider_id: str, retry_after: float | None
) -> UpstreamError:
    """The error an Anthropic error body (or ``error`` event) means; keeps its message."""
    message = read_error_body(payload).message
    return error_for_status(
        status,
        message,
        provider_id=provider_id,
        retry_after=retry_after,
        context_length=status == 400 and "prompt is too long" in message,
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class Block:
    """One content block of the answer, as far as it has come."""

    tool: int | None = None  # tool_use: the call's ordinal among client tool calls
    arguments: bool = False  # tool_use: some argument text was relayed
    server: dict[str, Any] | None = None  # server_tool_use: the block, input still to come
    pieces: list[str] = field(default_factory=list)  # server_tool_use: input_json_delta text


@dataclass
class StreamState:
    """What the answer has said so far; :meth:`feed` turns one read's events into ours."""

    provider: str
    usage: dict[str, int] = field(default_factory=dict)  # only the counts the provider sent
    reasoning_tokens: int | None = None
    stop_reason: str = ""
    message: dict[str, Any] = field(default_factory=dict)  # MESSAGE_FIELDS as last sent
    extra: dict[str, Any] = field(default_factory=dict)  # context_management, usage extras
    citations: list[Any] = field(default_factory=list)
    server_calls: list[dict[str, Any]] = field(default_factory=list)
    server_results: list[Any] = field(default_factory=list)
    blocks: dict[int, Block] = field(default_factory=dict)
    tools: int = 0
    stopped: bool = False
    error: UpstreamError | None = None

    def feed(self, batch: list[SseEvent]) -> list[AdapterEvent]:
        out: list[AdapterEvent] = []
        for sse in batch:
            if sse.event == "ping":
                continue
            try:
                data = orjson.loads(sse.data)
            except orjson.JSONDecodeError:
                self.error = UpstreamProtocolError(
                    f"{self.provider} sent an event that is not JSON", provider_id=self.provider
                )
                break
            if not isinstance(data, dict):
                continue
            if "type" not in data:  # hosts that name the event only in the SSE event field
                data["type"] = sse.event
            self.handle(data, out)
            if self.stopped or self.error is not None:
                break
        return _merged(out)

    def handle(self, data: dict[str, Any], out: list[AdapterEvent]) -> None:
        kind = data.get("type")
        if kind == "content_block_delta":
            self._delta(_index(data), data.get("delta") or {}, out)
        elif kind == "content_block_start":
            self._start(_index(data), data.get("content_block") or {}, out)
        elif kind == "content_block_stop":
            self._stop(_index(data), out)
        elif kind == "message_start":
            message = data.get("message") or {}
            self._message_fields(message)
            usage = message.get("usage")
            if isinstance(usage, dict) and self._usage(usage):
                out.append(self._prompt_usage())
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            if delta.get("stop_reason") is not None:
                self.stop_reason = str(delta["stop_reason"])
            self._message_fields(delta)
            if isinstance(data.get("usage"), dict):
                self._usage(data["usage"])
            if "context_management" in data:
                self.extra["context_management"] = data["context_management"]
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            error = data.get("error") or {}
            status = ERROR_STATUS.get(str(error.get("type")), 500)
            self.error = error_from_body(status, orjson.dumps(data), self.provider, None)

    def _start(self, index: int, block: dict[str, Any], out: list[AdapterEvent]) -> None:
        kind = str(block.get("type") or "")
        entry = self.blocks[index] = Block()
        if kind == "text":
            if block.get("text"):
                out.append(TextDelta(str(block["text"])))
            self.citations.extend(block.get("citations") or ())
        elif kind == "thinking":
            text, signature = str(block.get("thinking") or ""), str(block.get("signature") or "")
            if text or signature:
                out.append(_reasoning(index, text=text, signature=signature))
        elif kind == "redacted_thinking":
            out.append(_reasoning(index, redacted=str(block.get("data") or "")))
        elif kind == "tool_use":
            entry.tool = self.tools
            self.tools += 1
            out.append(
                ToolCallDelta(
                    entry.tool, id=str(block.get("id") or ""), name=block.get("name") or ""
                )
            )
            if block.get("input"):  # a whole body, or a host that sends the input at once
                entry.arguments = True
                out.append(
                    ToolCallDelta(entry.tool, arguments=orjson.dumps(block["input"]).decode())
                )
        elif kind in SERVER_CALLS:
            entry.server = dict(block)
            self.server_calls.append(entry.server)
        elif kind.endswith("_tool_result"):
            self.server_results.append(block)

    def _delta(self, index: int, delta: dict[str, Any], out: list[AdapterEvent]) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            if delta.get("text"):
                out.append(TextDelta(str(delta["text"])))
        elif kind == "input_json_delta":
            piece = str(delta.get("partial_json") or "")
            entry = self.blocks.get(index)
            if not piece or entry is None:
                return
            if entry.tool is not None:
                entry.arguments = True
                out.append(ToolCallDelta(entry.tool, arguments=piece))
            elif entry.server is not None:
                entry.pieces.append(piece)
        elif kind == "thinking_delta":
            if delta.get("thinking"):
                out.append(_reasoning(index, text=str(delta["thinking"])))
        elif kind == "signature_delta":
            if delta.get("signature"):
                out.append(_reasoning(index, signature=str(delta["signature"])))
        elif kind == "citations_delta" and delta.get("citation") is not None:
            self.citations.append(delta["citation"])

    def _stop(self, index: int, out: list[AdapterEvent]) -> None:
        entry = self.blocks.get(index)
        if entry is None:
            return
        if entry.tool is not None and not entry.arguments:
            entry.arguments = True
            out.append(ToolCallDelta(entry.tool, arguments="{}"))
        if entry.server is not None and entry.pieces:
            text = "".join(entry.pieces)
            entry.pieces.clear()
            try:
                entry.server["input"] = orjson.loads(text)
            except orjson.JSONDecodeError:
                entry.server["input"] = text

    def _message_fields(self, source: dict[str, Any]) -> None:
        for name in MESSAGE_FIELDS:
            if name in source:
                self.message[name] = source[name]

    def _usage(self, usage: dict[str, Any]) -> bool:
        """Take the counts ``usage`` holds; True when it held any of the prompt's."""
        prompt = False
        for wire, name in USAGE_FIELDS.items():
            count = _count(usage.get(wire))
            if count is not None:
                self.usage[name] = count
                prompt = prompt or name != "output"
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            for wire, name in CACHE_CREATION_FIELDS.items():
                count = _count(creation.get(wire))
                if count is not None:
                    self.usage[name] = count
                    prompt = True
        server = usage.get("server_tool_use")
        if isinstance(server, dict) and _count(server.get("web_search_requests")) is not None:
            self.usage["web_searches"] = server["web_search_requests"]
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and _count(details.get("thinking_tokens")) is not None:
            self.reasoning_tokens = details["thinking_tokens"]
        if usage.get("server_tool_use") is not None:
            self.extra["server_tool_usage"] = usage["server_tool_use"]
        return prompt

    def _prompt_usage(self) -> PromptUsage:
        cached = self.usage.get("cache_read", 0)
        hour = self.usage.get("cache_write_1h", 0)
        written = self.usage.get("cache_write", self.usage.get("cache_write_5m", 0) + hour)
        return PromptUsage(
            self.usage.get("input", 0) + cached + written,
            cached_tokens=cached,
            cache_write_tokens=written,
            cache_write_1h_tokens=min(hour, written),
        )

    def final(self) -> list[AdapterEvent]:
        """The events after ``message_stop``: the last calls' arguments, metadata, usage,
        finish."""
        out: list[AdapterEvent] = []
        for index in list(self.blocks):
            self._stop(index, out)  # blocks the stream never stopped (cut by max_tokens)
        metadata = self.metadata()
        if metadata:
            out.append(ProviderMetadata(metadata))
        if self.usage:
            prompt = self._prompt_usage()
            out.append(
                UsageReport(
                    prompt_tokens=prompt.prompt_tokens,
                    completion_tokens=self.usage.get("output", 0),
                    cached_tokens=prompt.cached_tokens,
                    reasoning_tokens=self.reasoning_tokens or 0,
                    cache_write_tokens=prompt.cache_write_tokens,
                    cache_write_1h_tokens=prompt.cache_write_1h_tokens,
                    web_searches=self.usage.get("web_searches", 0),
                )
            )
        out.append(FinishEvent(FINISH_REASONS.get(self.stop_reason, Finish.STOP), self.stop_reason))
        return out

    def end(self) -> list[AdapterEvent]:
        """After the last read: :meth:`final`'s events once ``message_stop`` came; a stream
        that failed relays nothing more, one that stopped without it ended early."""
        if self.error is None and not self.stopped:
            self.error = ended_early(self.provider)
        return [] if self.error is not None else self.final()

    def whole(self, body: bytes) -> list[AdapterEvent]:
        """A whole ``Message`` body's events (:func:`message_events`)."""
        return message_events(body, self.provider)

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.message.items() if v is not None}
        data.update((k, v) for k, v in self.extra.items() if v is not None)
        if self.citations:
            data["citations"] = self.citations
        if self.server_calls:
            data["server_tool_use"] = self.server_calls
        if self.server_results:
            data["server_tool_results"] = self.server_results
        return data


def message_events(payload: bytes, provider: str) -> list[AdapterEvent]:
    """The events of a whole (non-streamed) ``Message`` body, as its stream would give them."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"{provider} answered with a JSON body that does not parse", provider_id=provider
        ) from None
    if not isinstance(message, dict):
        raise UpstreamProtocolError(f"{provider} answered with no message", provider_id=provider)
    state = StreamState(provider)
    if message.get("type") == "error":
        state.handle(message, [])
    if state.error is not None:
        raise state.error
    out: list[AdapterEvent] = []
    head = {k: v for k, v in message.items() if k not in ("content", "usage")}
    state.handle({"type": "message_start", "message": head}, out)
    for index, block in enumerate(message.get("content") or ()):
        if isinstance(block, dict):
            state.handle(
                {"type": "content_block_start", "index": index, "content_block": block}, out
            )
            state.handle({"type": "content_block_stop", "index": index}, out)
    tail: dict[str, Any] = {"type": "message_delta", "delta": head}
    if isinstance(message.get("usage"), dict):
        tail["usage"] = message["usage"]
    state.handle(tail, out)
    return _merged(out) + state.final()


def _index(data: dict[str, Any]) -> int:
    index = data.get("index", 0)
    return index if isinstance(index, int) else 0


def _reasoning(
    index: int, *, text: str = "", signature: str = "", redacted: str = ""
) -> ReasoningDelta:
    return ReasoningDelta(
        text, format=ANTHROPIC_REASONING, block=index, signature=signature, redacted=redacted
    )


def _merged(events: list[AdapterEvent]) -> list[AdapterEvent]:
    """``events`` with runs of text deltas joined: one message per read, not per token."""
    out: list[AdapterEvent] = []
    for event in events:
        last = out[-1] if out else None
        if type(event) is TextDelta and type(last) is TextDelta:
            out[-1] = TextDelta(last.text + event.text)
        else:
            out.append(event)
    return out
