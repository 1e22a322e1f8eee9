"""Anthropic's prompt cache, as the fake Anthropic server keeps it (``Script.prompt_cache``).

The prompt is the sequence of blocks Anthropic renders, in its order: ``tools``, ``system``
(a string is one block), then each message's content blocks (a string is one block). A block
with ``cache_control`` ends a prefix to cache. Reference:
https://docs.claude.com/en/docs/build-with-claude/prompt-caching

- Refused as Anthropic refuses them (400): more than 4 blocks with ``cache_control``; a
  ``type`` other than ``ephemeral`` or a ``ttl`` other than ``5m`` / ``1h``; a 1-hour mark
  after a 5-minute one.
- A block's tokens are its words (text, a tool result's text, a tool's JSON); an image is
  :data:`IMAGE_TOKENS`. The prompt's count is their sum: with the cache on, the fake counts
  the prompt it was sent rather than ``Script.usage.prompt_tokens``.
- Reads: the longest prefix, up to the last mark, that an earlier accepted request of the same
  fake marked (Anthropic looks back from each mark for an earlier entry). Writes: from there,
  each mark whose prefix has at least :data:`MIN_CACHEABLE_TOKENS` writes the tokens since the
  previous write, for the mark's TTL (shorter prefixes are not cached, silently, as Anthropic
  does). Entries never expire here.
- Usage in Anthropic's terms: ``input_tokens`` excludes reads and writes;
  ``cache_creation`` splits the writes into ``ephemeral_5m_input_tokens`` and
  ``ephemeral_1h_input_tokens``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

MAX_MARKS = 4
TTLS = ("5m", "1h")
MIN_CACHEABLE_TOKENS = 1024  # Claude Sonnet's minimum; other models need more
IMAGE_TOKENS = 100
TOO_MANY = "A maximum of {limit} blocks with cache_control may be provided. Found {found}."


@dataclass(frozen=True)
class Block:
    key: bytes  # the block's content, without its cache_control
    tokens: int
    ttl: str  # "" when the block is not marked


@dataclass(frozen=True)
class CacheUsage:
    prompt_tokens: int
    read: int
    write_5m: int
    write_1h: int

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h


def blocks(body: dict[str, Any]) -> list[Block]:
    """The prompt's blocks in Anthropic's order."""
    raw: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if system:
        raw += [system] if isinstance(system, str) else list(system)
    for message in body.get("messages") or []:
        content = message.get("content")
        raw += [content] if isinstance(content, str) else list(content or [])
    return [_block(item) for item in raw]


def _block(item: Any) -> Block:
    if isinstance(item, str):
        return Block(item.encode(), len(item.split()), "")
    content = {k: v for k, v in item.items() if k != "cache_control"}
    mark = item.get("cache_control")
    ttl = (mark.get("ttl") or "5m") if isinstance(mark, dict) else ""
    if content.get("type") == "image":
        tokens = IMAGE_TOKENS
    else:
        text = content.get("text", content.get("content"))
        words = text if isinstance(text, str) else orjson.dumps(content).decode()
        tokens = len(words.split())
    return Block(orjson.dumps(content, option=orjson.OPT_SORT_KEYS), tokens, ttl)


def problem(body: dict[str, Any]) -> str | None:
    """Anthropic's message for marks it refuses, None when they are fine."""
    marks = _raw_marks(body)
    if len(marks) > MAX_MARKS:
        return TOO_MANY.format(limit=MAX_MARKS, found=len(marks))
    for mark in marks:
        if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
            return "cache_control.type: Input should be 'ephemeral'"
        if mark.get("ttl", "5m") not in TTLS:
            return "cache_control.ttl: Input should be '5m' or '1h'"
    ttls = [mark.get("ttl", "5m") for mark in marks]
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        return "a cache_control block with ttl='1h' may not come after one with ttl='5m'"
    return None


def _raw_marks(body: dict[str, Any]) -> list[Any]:
    items: list[Any] = list(body.get("tools") or [])
    if isinstance(body.get("system"), list):
        items += body["system"]
    for message in body.get("messages") or []:
        if isinstance(message.get("content"), list):
            items += message["content"]
    return [i["cache_control"] for i in items if isinstance(i, dict) and "cache_control" in i]


def _prefix_keys(prompt: list[Block]) -> list[bytes]:
    """The key of each prefix: ``keys[i]`` covers blocks 0..i."""
    digest, keys = hashlib.sha256(), []
    for block in prompt:
        digest.update(len(block.key).to_bytes(8, "big") + block.key)
        keys.append(digest.copy().digest())
    return keys


def _written(prompt: list[Block]) -> set[bytes]:
    """The prefixes a request with ``prompt`` writes to the cache."""
    keys, total, out = _prefix_keys(prompt), 0, set()
    for i, block in enumerate(prompt):
        total += block.tokens
        if block.ttl and total >= MIN_CACHEABLE_TOKENS:
            out.add(keys[i])
    return out


def usage(body: dict[str, Any], earlier: list[Any]) -> CacheUsage:
    """The cache usage of ``body`` after the ``earlier`` request bodies (a body whose marks
    Anthropic refuses wrote nothing)."""
    cached: set[bytes] = set()
    for other in earlier:
        if isinstance(other, dict) and problem(other) is None:
            cached |= _written(blocks(other))
    prompt = blocks(body)
    keys = _prefix_keys(prompt)
    marked = [i for i, block in enumerate(prompt) if block.ttl]
    last = marked[-1] if marked else -1
    hit = max((i for i in range(last + 1) if keys[i] in cached), default=-1)
    read = sum(block.tokens for block in prompt[: hit + 1])
    written = {"5m": 0, "1h": 0}
    start, total = hit + 1, read
    for i in range(hit + 1, last + 1):
        total += prompt[i].tokens
        if prompt[i].ttl and total >= MIN_CACHEABLE_TOKENS:
            written[prompt[i].ttl] += sum(block.tokens for block in prompt[start : i + 1])
            start = i + 1
    prompt_tokens = sum(block.tokens for block in prompt)
    return CacheUsage(prompt_tokens, read, written["5m"], written["1h"])
