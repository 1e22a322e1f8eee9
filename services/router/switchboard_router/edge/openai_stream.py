"""The relay's events as OpenAI ``chat.completion.chunk`` objects (OpenRouter's flavour).

Every chunk carries the generation id, ``created``, the serving ``model`` and ``provider``.
A choice's first chunk has ``delta.role``; text, refusal and reasoning (``delta.reasoning``)
stream as they come; a tool call's first piece has its id, type and name, later pieces only
their ``index`` and argument fragments. The finish chunk of each choice has an empty delta
but for ``reasoning_details``: the choice's reasoning blocks, whole and signed, to send back
on the next turn (streamed once, at the end, so a client that appends what it gets holds each
block once). With ``include_usage``, every chunk has ``"usage": null`` and one last chunk
with no choices carries the usage and cost, as OpenAI does.
"""

from __future__ import annotations

from typing import Any

from switchboard_core.money import format_usd
from switchboard_router.canonical import (
    LogprobsDelta,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
)
from switchboard_router.edge.openai_response import (
    finish_reason,
    logprobs_json,
    reasoning_details,
    usage_json,
)
from switchboard_router.relay import Completed, RelayEvent, Started
from switchboard_router.responses import detail_messages, logprob_messages
from switchboard_router.usage_sink import usage_message

JsonObject = dict[str, Any]


class ChunkStream:
    """Turns one generation's events into chunk objects, in order."""

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._head: JsonObject = {}
        self._spoken: set[int] = set()  # choices whose role was sent

    def chunks(self, event: RelayEvent) -> list[JsonObject]:
        """The chunks for one event (none for an event with nothing to say)."""
        if type(event) is Started:
            self._head = {
                "id": event.generation_id,
                "object": "chat.completion.chunk",
                "created": int(event.create_time),
                "model": event.route.model_id,
                "provider": event.route.provider_id,
                "system_fingerprint": None,
            }
            return [self._chunk(0, {"content": ""})]
        if type(event) is Completed:
            return self._completed(event)
        if type(event) is ReasoningDelta and not event.text:  # a seal: whole on the last chunk
            return []
        return [self._delta(event)]

    def _chunk(
        self, choice: int, delta: JsonObject, finish: str | None = None, **extra: Any
    ) -> JsonObject:
        if choice not in self._spoken:
            self._spoken.add(choice)
            delta = {"role": "assistant", **delta}
        out = {
            **self._head,
            "choices": [
                {"index": choice, "delta": delta, "finish_reason": finish, "logprobs": None} | extra
            ],
        }
        if self._include_usage:
            out["usage"] = None
        return out

    def _delta(self, event: RelayEvent) -> JsonObject:
        if type(event) is TextDelta:
            return self._chunk(event.choice, {"content": event.text})
        if type(event) is ReasoningDelta:
            return self._chunk(event.choice, {"reasoning": event.text})
        if type(event) is RefusalDelta:
            return self._chunk(event.choice, {"refusal": event.text})
        if type(event) is ToolCallDelta:
            call: JsonObject = {"index": event.index, "function": {"arguments": event.arguments}}
            if event.id or event.name:
                call["id"] = event.id
                call["type"] = "function"
                call["function"] = {"name": event.name, "arguments": event.arguments}
            if event.signature:
                call["signature"] = event.signature
            return self._chunk(event.choice, {"tool_calls": [call]})
        assert type(event) is LogprobsDelta
        tokens = logprobs_json(logprob_messages(event.tokens))
        key = "refusal" if event.refusal else "content"
        return self._chunk(event.choice, {}, logprobs={key: tokens})

    def _completed(self, event: Completed) -> list[JsonObject]:
        finishes = dict(event.choices) or {0: event.finish}
        out = []
        for index, finish in sorted(finishes.items()):
            delta: JsonObject = {}
            blocks = event.reasoning.get(index, ())
            if blocks:
                delta["reasoning_details"] = reasoning_details(detail_messages(blocks))
            chunk = self._chunk(
                index,
                delta,
                finish_reason(int(finish.reason)),
                native_finish_reason=finish.native_reason or None,
            )
            out.append(chunk)
        if self._include_usage:
            usage = usage_json(usage_message(event.usage), format_usd(event.cost))
            out.append({**self._head, "choices": [], "usage": usage})
        return out
