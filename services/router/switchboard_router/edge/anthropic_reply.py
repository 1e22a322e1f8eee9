"""The relay's events as Anthropic Messages answers: SSE events as Anthropic streams them, or
one whole ``message`` object, and errors in Anthropic's error JSON.

Wire format: https://docs.claude.com/en/api/messages and
https://docs.claude.com/en/docs/build-with-claude/streaming. A stream is ``message_start`` (the
message without content; ``id`` is the generation id, ``model`` the catalog's model id), a
``ping``, then per content block ``content_block_start`` / ``content_block_delta`` /
``content_block_stop`` (``text`` with ``text_delta``, ``thinking`` with ``thinking_delta`` and
``signature_delta``, ``redacted_thinking`` whole at its start, ``tool_use`` with
``input_json_delta``), then ``message_delta`` (``stop_reason``, ``stop_sequence`` and the whole
usage: the prompt's counts are known only at the end) and ``message_stop``. A failure after the
stream started is an ``error`` event.

Usage is Anthropic's split: ``input_tokens`` excludes the prompt's cache reads
(``cache_read_input_tokens``) and cache writes (``cache_creation_input_tokens``, split by TTL
in ``cache_creation``); ``output_tokens`` includes reasoning (``output_tokens_details``).

Reasoning: blocks the provider signed (Anthropic's format) come with their signature, to be sent
back verbatim; reasoning of other providers is a ``thinking`` block with an empty signature.
The whole message carries every signed block (and ``redacted_thinking``) first, as Anthropic
orders them; a stream carries the signatures and redacted blocks the relay passes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    Finish,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from switchboard_router.providers.anthropic_stream import FINISH_REASONS
from switchboard_router.relay import Completed, RelayEvent, Started

SseEvent = tuple[str, dict[str, Any]]  # (event name, data)

STOP_REASONS = {
    Finish.STOP: "end_turn",
    Finish.LENGTH: "max_tokens",
    Finish.TOOL_CALLS: "tool_use",
    Finish.CONTENT_FILTER: "refusal",
}
# Anthropic's error types by HTTP status (https://docs.claude.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_json(status: int, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": request_id,
    }


def usage_json(usage: UsageReport) -> dict[str, Any]:
    written, hour = (
        usage.cache_write_tokens,
        min(usage.cache_write_1h_tokens, usage.cache_write_tokens),
    )
    out: dict[str, Any] = {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens - written),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - hour,
            "ephemeral_1h_input_tokens": hour,
        },
    }
    if usage.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    if usage.web_searches:
        out["server_tool_use"] = {"web_search_requests": usage.web_searches}
    return out


def stop_of(end: Completed) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)``: the provider's own when it is Anthropic's and agrees
    with the canonical finish, else the canonical finish's."""
    reason, native = end.finish.reason, end.finish.native_reason
    sequence = (end.metadata or {}).get("stop_sequence")
    sequence = sequence if isinstance(sequence, str) else None
    if FINISH_REASONS.get(native) == reason:
        return native, sequence if native == "stop_sequence" else None
    if sequence is not None and reason == Finish.STOP:
        return "stop_sequence", sequence
    return STOP_REASONS.get(reason, "end_turn"), None


def _head(started: Started) -> dict[str, Any]:
    return {
        "id": started.generation_id,
        "type": "message",
        "role": "assistant",
        "model": started.route.model_id,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }


def _tool_id(call: ToolCallDelta, generation_id: str) -> str:
    return call.id or f"toolu_{generation_id}_{call.index}"


def _signed(block: ReasoningBlock) -> dict[str, Any]:
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted}
    signature = block.signature if block.format == ANTHROPIC_REASONING else ""
    return {"type": "thinking", "thinking": block.text, "signature": signature}


def _arguments(text: str) -> Any:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class StreamReply:
    """Turns relay events into Anthropic's SSE events, one content block open at a time."""

    generation_id: str = ""
    index: int = -1  # the last content block's index
    open: tuple[str, Any] | None = None  # the open block's kind and key
    tools: dict[int, int] = field(default_factory=dict)  # tool call index -> block index

    def events(self, event: RelayEvent) -> list[SseEvent]:
        out: list[SseEvent] = []
        if type(event) is Started:
            self.generation_id = event.generation_id
            message = {**_head(event), "usage": {"input_tokens": 0, "output_tokens": 0}}
            out.append(("message_start", {"type": "message_start", "message": message}))
            out.append(("ping", {"type": "ping"}))
        elif type(event) is TextDelta or type(event) is RefusalDelta:
            if event.choice == 0 and event.text:
                self._enter(("text", None), {"type": "text", "text": ""}, out)
                out.append(self._delta({"type": "text_delta", "text": event.text}))
        elif type(event) is ReasoningDelta:
            if event.choice == 0:
                self._reasoning(event, out)
        elif type(event) is ToolCallDelta:
            if event.choice == 0:
                self._tool(event, out)
        elif type(event) is Completed:
            self._close(out)
            stop_reason, stop_sequence = stop_of(event)
            delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
            usage = usage_json(event.usage)
            out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
            out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _reasoning(self, event: ReasoningDelta, out: list[SseEvent]) -> None:
        if event.redacted:
            self._close(out)
            self._enter(
                ("redacted", None), {"type": "redacted_thinking", "data": event.redacted}, out
            )
            self._close(out)
            return
        key = ("thinking", (event.format, event.block))
        signed = bool(event.signature) and event.format == ANTHROPIC_REASONING
        if event.text or signed:  # a signature alone: thinking whose text was not relayed
            self._enter(key, {"type": "thinking", "thinking": "", "signature": ""}, out)
        if event.text:
            out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
        if signed:
            out.append(self._delta({"type": "signature_delta", "signature": event.signature}))

    def _tool(self, event: ToolCallDelta, out: list[SseEvent]) -> None:
        key = ("tool", event.index)
        if event.index not in self.tools:
            start = {
                "type": "tool_use",
                "id": _tool_id(event, self.generation_id),
                "name": event.name,
                "input": {},
            }
            self._enter(key, start, out)
            self.tools[event.index] = self.index
        if event.arguments:
            # A call's pieces follow its start; a host that interleaves calls gets each piece
            # on its own call's block (clients assemble by index).
            data = {"type": "input_json_delta", "partial_json": event.arguments}
            out.append(self._delta(data, self.tools[event.index]))

    def _enter(self, key: tuple[str, Any], block: dict[str, Any], out: list[SseEvent]) -> None:
        if self.open == key:
            return
        self._close(out)
        self.index += 1
        self.open = key
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )

    def _close(self, out: list[SseEvent]) -> None:
        if self.open is not None:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.open = None

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> SseEvent:
        at = self.index if index is None else index
        return ("content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta})


def sse_bytes(events: list[SseEvent]) -> bytes:
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        for name, data in events
    )


@dataclass
class WholeReply:
    """Folds relay events into one Anthropic ``message`` object."""

    started: Started | None = None
    end: Completed | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)  # text and tool_use, in order
    calls: dict[int, list[str]] = field(default_factory=dict)  # tool index -> argument pieces
    reasoning: list[str] = field(default_factory=list)

    def add(self, event: RelayEvent) -> None:
        if type(event) is Started:
            self.started = event
        elif type(event) is Completed:
            self.end = event
        elif type(event) is TextDelta or type(event) is RefusalDelta:
            if event.choice == 0 and event.text:
                last = self.blocks[-1] if self.blocks else None
                if last is not None and last["type"] == "text":
                    last["text"] += event.text
                else:
                    self.blocks.append({"type": "text", "text": event.text})
        elif type(event) is ReasoningDelta:
            if event.choice == 0:
                self.reasoning.append(event.text)
        elif type(event) is ToolCallDelta and event.choice == 0:
            if event.index not in self.calls:
                generation = self.started.generation_id if self.started else ""
                self.calls[event.index] = []
                self.blocks.append(
                    {
                        "type": "tool_use",
                        "id": _tool_id(event, generation),
                        "name": event.name,
                        "index": event.index,
                    }
                )
            self.calls[event.index].append(event.arguments)

    def result(self) -> dict[str, Any]:
        assert self.started is not None  # the relay yields both
        assert self.end is not None
        end = self.end
        signed = [_signed(b) for b in end.reasoning.get(0, ())]
        thinking = "".join(self.reasoning)
        if not signed and thinking:
            signed = [{"type": "thinking", "thinking": thinking, "signature": ""}]
        content = list(signed)
        for block in self.blocks:
            if block["type"] == "tool_use":
                index = block.pop("index")
                block["input"] = _arguments("".join(self.calls[index]))
            content.append(block)
        stop_reason, stop_sequence = stop_of(end)
        return {
            **_head(self.started),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage_json(end.usage),
        }
