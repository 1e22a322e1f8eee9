"""Reading the fields of one OpenAI chat-completions choice (a stream's ``delta`` or a whole
answer's ``message``) and its usage, whatever shape a compatible host gives them: see
:mod:`.openai_stream` for which host sends what."""

from __future__ import annotations

from typing import Any

from switchboard_router.canonical import TokenLogprob, TopLogprob, UsageReport

TEXT, REASONING, REFUSAL = "text", "reasoning", "refusal"


def parse_usage(usage: dict[str, Any]) -> UsageReport:
    """OpenAI's usage object, and the fields compatible hosts add.

    OpenAI (https://platform.openai.com/docs/api-reference/chat/object): ``prompt_tokens_details``
    ``cached_tokens`` and ``audio_tokens`` (audio input, cached audio included: chat completions
    do not split it), ``completion_tokens_details`` ``reasoning_tokens`` and ``audio_tokens``
    (audio output). OpenRouter adds ``cache_write_tokens``, ``image_tokens`` and
    ``video_tokens`` to the prompt's details; DeepSeek reports cache hits as
    ``prompt_cache_hit_tokens``.
    """
    prompt = object_of(usage.get("prompt_tokens_details"))
    completion = object_of(usage.get("completion_tokens_details"))
    return UsageReport(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(prompt.get("cached_tokens") or usage.get("prompt_cache_hit_tokens")),
        reasoning_tokens=_count(completion.get("reasoning_tokens")),
        cache_write_tokens=_count(prompt.get("cache_write_tokens")),
        audio_prompt_tokens=_count(prompt.get("audio_tokens")),
        image_prompt_tokens=_count(prompt.get("image_tokens")),
        video_prompt_tokens=_count(prompt.get("video_tokens")),
        audio_completion_tokens=_count(completion.get("audio_tokens")),
    )


def object_of(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def content_pieces(content: Any) -> list[tuple[str, str]]:
    """(kind, text) for a ``content`` that is a string or a list of typed parts."""
    if isinstance(content, str):
        return [(TEXT, content)]
    if not isinstance(content, list):
        return []
    pieces: list[tuple[str, str]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append((TEXT, part["text"]))
        elif kind == "thinking":
            pieces.append((REASONING, _thinking_text(part.get("thinking"))))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            pieces.append((REFUSAL, part["refusal"]))
    return pieces


def _thinking_text(thinking: Any) -> str:
    if isinstance(thinking, str):
        return thinking
    if isinstance(thinking, list):
        return "".join(
            p["text"] for p in thinking if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def reasoning_text(delta: dict[str, Any]) -> str:
    for name in ("reasoning_content", "reasoning"):
        value = delta.get(name)
        if isinstance(value, str) and value:
            return value
    details = delta.get("reasoning_details")
    if not isinstance(details, list):
        return ""
    texts = []
    for item in details:
        if isinstance(item, dict):
            value = item.get("text") if item.get("type") != "reasoning.summary" else None
            value = value or item.get("summary")
            if isinstance(value, str):
                texts.append(value)
    return "".join(texts)


def logprob_tokens(items: Any) -> tuple[TokenLogprob, ...]:
    if not isinstance(items, list):
        return ()
    tokens = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("logprob"), int | float):
            continue
        top = tuple(
            TopLogprob(str(t.get("token", "")), float(t["logprob"]), _bytes(t.get("bytes")))
            for t in item.get("top_logprobs") or ()
            if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
        )
        tokens.append(
            TokenLogprob(
                str(item.get("token", "")), float(item["logprob"]), _bytes(item.get("bytes")), top
            )
        )
    return tuple(tokens)


def _bytes(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return tuple(value)
    return None
