"""Gemini thinking: the ``reasoning`` request parameter, and thought signatures sent back.

**How much to think** (https://ai.google.dev/gemini-api/docs/thinking) depends on the model,
read from the target's ``upstream_model`` (``gemini-<major>.<minor>-<tier>``):

- Gemini 3 and later take ``thinkingLevel``. Flash models (Flash-Lite included) know
  ``minimal``, ``low``, ``medium`` and ``high``; Pro knows ``low`` and ``high``, so effort
  maps to the nearest level it has. Thinking cannot be switched off: ``enabled=False`` and
  effort ``none`` ask for the lowest level. A ``max_tokens`` budget is sent as
  ``thinkingBudget``, which Gemini 3 still accepts for compatibility (never both fields: that
  is a 400).
- Gemini 2.5 takes ``thinkingBudget`` in tokens: Pro 128..32768 (cannot be off), Flash
  0..24576, Flash-Lite 0 or 512..24576. A ``max_tokens`` budget is clamped into that range;
  an effort becomes OpenRouter's share of the request's ``max_tokens`` (minimal 10%, low 20%,
  medium 50%, high 80%; at least 1024, at most 32000; of the tier's maximum when the request
  sets no ``max_tokens``), clamped likewise. ``enabled=False`` / effort ``none`` is 0 where the
  tier allows it, else the tier's minimum.
- Other models (Gemini 2.0 and older, Gemma) do not think: no ``thinkingConfig`` is sent.

``includeThoughts`` (thought summaries, relayed as reasoning) is on unless the client asked
to ``exclude`` reasoning or turned thinking off.

**Sending signatures back** (https://ai.google.dev/gemini-api/docs/thought-signatures): each
signature goes back on the part it came with, unmerged. For Gemini 3 the first
``functionCall`` part of every model step must carry its signature, or the request is refused
with a 400; parallel calls after the first carry none. A call that never had one (made by
another model, or written by the client) gets the documented placeholder
``skip_thought_signature_validator``, which Gemini API and Vertex both accept. Signatures on
text parts are recommended, not required: the model turn's text is sent as one part, so the
last text-part signature goes on it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from switchboard_router.canonical import (
    GEMINI_REASONING,
    CompletionRequest,
    Message,
    ReasoningEffort,
)

PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"
_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?")
# Gemini 2.5 thinking budgets: (smallest, largest, can be 0).
BUDGETS = {"pro": (128, 32768, False), "flash-lite": (512, 24576, True), "flash": (1, 24576, True)}
EFFORT_SHARE = {
    ReasoningEffort.MINIMAL: 0.1,
    ReasoningEffort.LOW: 0.2,
    ReasoningEffort.MEDIUM: 0.5,
    ReasoningEffort.HIGH: 0.8,
}
FLASH_LEVELS = {
    ReasoningEffort.NONE: "minimal",
    ReasoningEffort.MINIMAL: "minimal",
    ReasoningEffort.LOW: "low",
    ReasoningEffort.MEDIUM: "medium",
    ReasoningEffort.HIGH: "high",
}
PRO_LEVELS = {
    ReasoningEffort.NONE: "low",
    ReasoningEffort.MINIMAL: "low",
    ReasoningEffort.LOW: "low",
    ReasoningEffort.MEDIUM: "high",
    ReasoningEffort.HIGH: "high",
}


def generation(model: str) -> tuple[int, int] | None:
    """(major, minor) of a Gemini model name, None for anything else."""
    found = _VERSION.search(model.lower())
    return (int(found[1]), int(found[2] or 0)) if found else None


def _tier(model: str) -> str:
    name = model.lower()
    if "flash-lite" in name:
        return "flash-lite"
    return "flash" if "flash" in name else "pro"


def thinking_config(request: CompletionRequest, model: str) -> dict[str, Any] | None:
    """``generationConfig.thinkingConfig`` for ``request.reasoning`` on ``model``."""
    reasoning = request.reasoning
    version = generation(model)
    if reasoning is None or version is None or version < (2, 5):
        return None
    off = not reasoning.enabled or reasoning.effort == ReasoningEffort.NONE
    config: dict[str, Any] = {}
    tier = _tier(model)
    if version >= (3, 0):
        levels = PRO_LEVELS if tier == "pro" else FLASH_LEVELS
        if off:
            config["thinkingLevel"] = levels[ReasoningEffort.NONE]
        elif reasoning.max_tokens is not None:
            config["thinkingBudget"] = reasoning.max_tokens
        elif reasoning.effort is not None:
            config["thinkingLevel"] = levels[reasoning.effort]
    else:
        low, high, can_stop = BUDGETS[tier]
        if off:
            budget = 0 if can_stop else low
        elif reasoning.max_tokens is not None:
            budget = reasoning.max_tokens
        elif reasoning.effort is not None:
            base = request.max_tokens or high
            budget = max(1024, min(32000, int(base * EFFORT_SHARE[reasoning.effort])))
        else:
            budget = None
        if budget is not None:
            config["thinkingBudget"] = (
                0 if budget == 0 and can_stop else min(high, max(low, budget))
            )
    if not off and not reasoning.exclude:
        config["includeThoughts"] = True
    return config or None


def model_parts(
    message: Message, content: list[dict[str, Any]], model: str
) -> list[dict[str, Any]]:
    """An assistant message's parts: its thought summaries with their signatures, its
    ``content`` (text and images; the last text part carries the text-part signature), then
    its function calls with theirs."""
    parts: list[dict[str, Any]] = []
    text_signature = ""
    for block in message.reasoning:
        if block.format != GEMINI_REASONING:
            continue  # another provider's reasoning: Gemini cannot verify it
        if block.text:
            part: dict[str, Any] = {"text": block.text, "thought": True}
            if block.signature:
                part["thoughtSignature"] = block.signature
            parts.append(part)
        elif block.signature:
            text_signature = block.signature
    content = [dict(part) for part in content]
    texts = [part for part in content if "text" in part]
    if text_signature and not texts and not message.tool_calls:
        texts = [{"text": ""}]
        content.append(texts[0])
    if text_signature and texts:
        texts[-1]["thoughtSignature"] = text_signature
    parts += content
    version = generation(model)
    for position, call in enumerate(message.tool_calls):
        try:
            args = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            args = {}
        part = {"functionCall": {"name": call.name, "args": args}}
        if call.signature:
            part["thoughtSignature"] = call.signature
        elif position == 0 and version is not None and version >= (3, 0):
            part["thoughtSignature"] = PLACEHOLDER_SIGNATURE
        parts.append(part)
    return parts
