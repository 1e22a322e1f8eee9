"""The Anthropic messages request body (https://docs.claude.com/en/api/messages).

System messages become the top-level ``system``; tool results are user turns of
``tool_result`` blocks; consecutive turns of one role are merged (roles must alternate).

**Reasoning.** ``CompletionRequest.reasoning`` becomes extended thinking,
``thinking: {"type": "enabled", "budget_tokens": N}`` (manual mode; models that only think
adaptively refuse it, and the relay falls back). N is ``reasoning.max_tokens``, else a share of
the request's ``max_tokens`` by effort, as OpenRouter maps it
(https://openrouter.ai/docs/guides/best-practices/reasoning-tokens): minimal 10%, low 20%,
medium 50% (also for ``enabled`` with neither), high 80%; then at least 1024 (Anthropic's
minimum) and at most 128000. The budget must stay below ``max_tokens``, so ``max_tokens`` is
raised to budget + ``max_tokens`` when it is not (never past the endpoint's output cap).
``enabled=False`` or effort ``none`` sends no ``thinking`` (Anthropic's default is off).

With thinking on, Anthropic refuses some sampling settings and forced tool use
(https://docs.claude.com/en/docs/build-with-claude/extended-thinking, "Feature
compatibility"). The body then drops what would be refused rather than fail the request:
``temperature`` unless it is 1, ``top_k`` always, and ``top_p`` is clamped into [0.95, 1].
A forced ``tool_choice`` (required, or a named tool) wins over thinking: thinking is not
enabled for that request. Neither is it when the request continues a tool-use turn whose
assistant message carries no signed thinking block of Anthropic's format (blocks from another
provider are dropped): Anthropic refuses such a turn with thinking on ("a final `assistant`
message must start with a thinking block ... To avoid this requirement, disable `thinking`").

**Round trip.** An assistant message's ``reasoning`` blocks of ``ANTHROPIC_REASONING`` format go
back first in its content, in order, as ``thinking`` (text and ``signature``) or
``redacted_thinking`` (``data``) blocks, before its text and ``tool_use`` blocks, as Anthropic
requires ("Preserving thinking blocks"). A thinking block without a signature (its stream was
cut) cannot be verified and is left out.

**Prompt caching** (https://docs.claude.com/en/docs/build-with-claude/prompt-caching). A part's
cache mark (``TextPart.cache`` / ``ImagePart.cache``, checked by the router's request rules)
becomes ``cache_control`` on the block the part becomes: ``{"type": "ephemeral"}`` for 5
minutes, ``{"type": "ephemeral", "ttl": "1h"}`` for an hour (generally available: no beta
header). A mark on a tool message's part goes on its ``tool_result`` block. When a system part
is marked, ``system`` is sent as a list of text blocks, one per non-empty system part, so the
mark has a block to sit on; otherwise it stays one string (system messages joined by a blank
line).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    CACHE_1H,
    CompletionRequest,
    Message,
    Part,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningEffort,
    Role,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
)
from switchboard_router.providers.base import Target

DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024
MAX_THINKING_BUDGET = 128_000
# Share of max_tokens given to thinking, by effort (OpenRouter's mapping).
EFFORT_SHARE = {
    ReasoningEffort.MINIMAL: 0.1,
    ReasoningEffort.LOW: 0.2,
    ReasoningEffort.MEDIUM: 0.5,
    ReasoningEffort.HIGH: 0.8,
}
MIN_THINKING_TOP_P = 0.95
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def reasoning_block(block: ReasoningBlock) -> dict[str, Any] | None:
    """The content block that sends ``block`` back, or None when it cannot go back."""
    if block.format != ANTHROPIC_REASONING:
        return None  # another provider's: Anthropic cannot verify it
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted}
    if not block.signature:
        return None
    return {"type": "thinking", "thinking": block.text, "signature": block.signature}


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def cache_control(cache: str) -> dict[str, str]:
    """The ``cache_control`` value of a cache mark (``CACHE_5M`` or ``CACHE_1H``)."""
    return {"type": "ephemeral", "ttl": "1h"} if cache == CACHE_1H else {"type": "ephemeral"}


def _marked(block: dict[str, Any], part: Part) -> dict[str, Any]:
    if part.cache:
        block["cache_control"] = cache_control(part.cache)
    return block


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == Role.TOOL:
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": message.text,
        }
        marks = [p.cache for p in message.parts if p.cache]
        if marks:
            result["cache_control"] = cache_control(marks[-1])
        return [result]
    blocks: list[dict[str, Any]] = []
    if message.role == Role.ASSISTANT:
        blocks.extend(b for b in map(reasoning_block, message.reasoning) if b is not None)
    for part in message.parts:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append(_marked({"type": "text", "text": part.text}, part))
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
        blocks.append(_marked({"type": "image", "source": source}, part))
    for call in message.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _arguments(call.arguments),
            }
        )
    return blocks


def _system(messages: list[Message]) -> str | list[dict[str, Any]]:
    """The ``system`` value: a string, or text blocks when a part is marked for caching."""
    if not any(part.cache for message in messages for part in message.parts):
        return "\n\n".join(message.text for message in messages)
    return [
        _marked({"type": "text", "text": part.text}, part)
        for message in messages
        for part in message.parts
        if isinstance(part, TextPart) and part.text
    ]


def _messages(
    request: CompletionRequest,
) -> tuple[list[dict[str, Any]], str | list[dict[str, Any]]]:
    """Turns with consecutive same-role messages merged (tool results are user turns), and
    the system prompt."""
    system: list[Message] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == Role.SYSTEM:
            system.append(message)
            continue
        role = "assistant" if message.role == Role.ASSISTANT else "user"
        blocks = _blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns, _system(system)


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


def continues_unsigned_tool_turn(turns: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn made tool calls that the next turn answers, and does
    not start with a thinking block: Anthropic refuses that with thinking on."""
    for position in range(len(turns) - 1, -1, -1):
        turn = turns[position]
        if turn["role"] != "assistant":
            continue
        content = turn["content"]
        if not any(b.get("type") == "tool_use" for b in content):
            return False
        answered = position + 1 < len(turns) and any(
            b.get("type") == "tool_result" for b in turns[position + 1]["content"]
        )
        return answered and (not content or content[0].get("type") not in THINKING_BLOCKS)
    return False


def thinking_budget(reasoning: ReasoningConfig | None, max_tokens: int) -> int | None:
    """The thinking budget ``reasoning`` asks for, None for no thinking."""
    if reasoning is None or not reasoning.enabled or reasoning.effort == ReasoningEffort.NONE:
        return None
    if reasoning.max_tokens is not None:
        budget = reasoning.max_tokens
    else:
        budget = int(max_tokens * EFFORT_SHARE[reasoning.effort or ReasoningEffort.MEDIUM])
    return min(max(budget, MIN_THINKING_BUDGET), MAX_THINKING_BUDGET)


def _think(body: dict[str, Any], budget: int, cap: int) -> None:
    """Turn thinking on in ``body``: budget below max_tokens, sampling settings it allows."""
    if budget >= body["max_tokens"]:
        body["max_tokens"] = budget + body["max_tokens"]
        if cap:
            body["max_tokens"] = min(body["max_tokens"], cap)
            budget = max(MIN_THINKING_BUDGET, min(budget, body["max_tokens"] - 1))
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if body.get("temperature", 1) != 1:
        del body["temperature"]
    body.pop("top_k", None)
    if "top_p" in body:
        body["top_p"] = min(1.0, max(MIN_THINKING_TOP_P, body["top_p"]))


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
    forced = False
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        choice = request.tool_choice or ToolChoice(ToolChoiceMode.AUTO)
        forced = choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.TOOL)
        if request.tool_choice is not None or request.parallel_tool_calls is False:
            body["tool_choice"] = _tool_choice(choice, request.parallel_tool_calls)
    budget = thinking_budget(request.reasoning, max_tokens)
    if budget is not None and not forced and not continues_unsigned_tool_turn(messages):
        _think(body, budget, target.max_completion_tokens)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    return body
