"""Validate the request's reasoning, log-probability and choice-count options, the
reasoning blocks a client sends back on an assistant turn, and prompt-cache marks (for
:mod:`.requests`).

Problems are collected as ``(field, message)`` pairs, like every other check of a request.

**Cache marks** (``ContentPart.cache_control``, OpenRouter's per-part ``cache_control``) end a
prompt prefix the provider should cache. They follow Anthropic's rules, the strictest of the
providers that take marks (https://docs.claude.com/en/docs/build-with-claude/prompt-caching),
so a request valid here is never refused upstream for its marks: at most 4 marks
(:data:`MAX_CACHE_MARKS`; Anthropic counts blocks with ``cache_control``); a TTL of 5 minutes
(the default) or 1 hour; a marked text part not empty (an empty part sends no block to carry
the mark); and, as "cache entries with longer TTL must appear before shorter TTLs", no 1-hour
mark after a 5-minute one in prompt order. Prompt order puts system messages first, as
Anthropic renders them (``system`` before ``messages``); what a prefix is too short to cache
(Anthropic: 1024 tokens or more depending on the model) is not checked: the provider then
silently caches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    CACHE_1H,
    CACHE_5M,
    GEMINI_REASONING,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningEffort,
    Role,
)

Problems = list[tuple[str, str]]
AnyCompletionRequest = router_pb2.StreamCompletionRequest | router_pb2.CreateCompletionRequest

MAX_REASONING_TOKENS = 1_000_000
MAX_TOP_LOGPROBS = 20  # OpenAI's limit; Gemini's is lower and its adapter says so
MAX_CHOICES = 8
MAX_REASONING_DETAILS = 64  # per message
MAX_SIGNATURE_CHARS = 1024 * 1024
MAX_CACHE_MARKS = 4  # Anthropic's limit of blocks with cache_control in one request
CACHE_TTLS = {
    common_pb2.CacheControl.TTL_UNSPECIFIED: CACHE_5M,  # the provider's default
    common_pb2.CacheControl.TTL_5M: CACHE_5M,
    common_pb2.CacheControl.TTL_1H: CACHE_1H,
}
REASONING_FORMATS = (ANTHROPIC_REASONING, GEMINI_REASONING)
EFFORTS = {
    router_pb2.Reasoning.EFFORT_NONE: ReasoningEffort.NONE,
    router_pb2.Reasoning.EFFORT_MINIMAL: ReasoningEffort.MINIMAL,
    router_pb2.Reasoning.EFFORT_LOW: ReasoningEffort.LOW,
    router_pb2.Reasoning.EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    router_pb2.Reasoning.EFFORT_HIGH: ReasoningEffort.HIGH,
}


def reasoning_config(request: AnyCompletionRequest, problems: Problems) -> ReasoningConfig | None:
    """The request's ``reasoning`` object, or None when it is not set."""
    if not request.HasField("reasoning"):
        return None
    given = request.reasoning
    effort = EFFORTS.get(given.effort)
    if given.effort and effort is None:
        problems.append(("reasoning.effort", "unknown effort"))
    budget = given.max_tokens if given.HasField("max_tokens") else None
    if budget is not None and not 1 <= budget <= MAX_REASONING_TOKENS:
        problems.append(("reasoning.max_tokens", f"must be between 1 and {MAX_REASONING_TOKENS}"))
    if effort is not None and budget is not None:
        problems.append(("reasoning.max_tokens", "set effort or max_tokens, not both"))
    enabled = given.enabled if given.HasField("enabled") else True
    if not enabled and (effort not in (None, ReasoningEffort.NONE) or budget is not None):
        problems.append(("reasoning.enabled", "false, yet an effort or max_tokens is set"))
    if effort == ReasoningEffort.NONE:
        enabled = False
    return ReasoningConfig(effort=effort, max_tokens=budget, exclude=given.exclude, enabled=enabled)


def sampling_options(
    request: AnyCompletionRequest, problems: Problems
) -> tuple[bool | None, int | None, int | None]:
    """``(logprobs, top_logprobs, n)`` as set, each None when unset."""
    logprobs = request.logprobs if request.HasField("logprobs") else None
    top = request.top_logprobs if request.HasField("top_logprobs") else None
    n = request.n if request.HasField("n") else None
    if top is not None:
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            problems.append(("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}"))
        if not logprobs:
            problems.append(("top_logprobs", "requires logprobs to be true"))
    if n is not None and not 1 <= n <= MAX_CHOICES:
        problems.append(("n", f"must be between 1 and {MAX_CHOICES}"))
    return logprobs, top, (None if n == 1 else n)


def reasoning_details(
    m: common_pb2.ChatMessage, role: Role, field: str, problems: Problems
) -> tuple[ReasoningBlock, ...]:
    """The reasoning blocks of an assistant turn, as the client sends them back."""
    if not m.reasoning_details:
        return ()
    if role != Role.ASSISTANT:
        problems.append(
            (f"{field}.reasoning_details", "only ROLE_ASSISTANT messages carry reasoning")
        )
        return ()
    if len(m.reasoning_details) > MAX_REASONING_DETAILS:
        problems.append((f"{field}.reasoning_details", f"at most {MAX_REASONING_DETAILS}"))
        return ()
    out = []
    for j, detail in enumerate(m.reasoning_details):
        where = f"{field}.reasoning_details[{j}]"
        if detail.format not in REASONING_FORMATS:
            problems.append((f"{where}.format", "must be one of " + ", ".join(REASONING_FORMATS)))
        if not (detail.text or detail.signature or detail.redacted_data):
            problems.append((where, "set text, signature or redacted_data"))
        for name in ("signature", "redacted_data"):
            if len(getattr(detail, name)) > MAX_SIGNATURE_CHARS:
                problems.append((f"{where}.{name}", f"at most {MAX_SIGNATURE_CHARS} characters"))
        out.append(
            ReasoningBlock(detail.format, detail.text, detail.signature, detail.redacted_data)
        )
    return tuple(out)


def block_size(block: ReasoningBlock) -> int:
    return len(block.text) + len(block.signature) + len(block.redacted)


def cache_mark(part: common_pb2.ContentPart, where: str, problems: Problems) -> str:
    """The part's cache mark: "" when it has none, else its TTL (``CACHE_5M`` / ``CACHE_1H``)."""
    if not part.HasField("cache_control"):
        return ""
    ttl = CACHE_TTLS.get(part.cache_control.ttl)
    if ttl is None:
        problems.append((f"{where}.cache_control.ttl", "unknown ttl"))
        return ""
    if part.WhichOneof("kind") == "text" and not part.text:
        problems.append((f"{where}.cache_control", "marks an empty text part"))
    return ttl


@dataclass(frozen=True, slots=True)
class CacheMark:
    """Where a cache mark is (its part's field path) and what it asks for."""

    field: str
    ttl: str
    system: bool  # the part is in a system message (those lead the prompt)


def check_cache_marks(marks: list[CacheMark], problems: Problems) -> None:
    """The request-wide rules for cache marks (see the module doc)."""
    if len(marks) > MAX_CACHE_MARKS:
        extra = marks[MAX_CACHE_MARKS]
        problems.append(
            (f"{extra.field}.cache_control", f"a request takes at most {MAX_CACHE_MARKS} marks")
        )
    ordered = sorted(marks, key=lambda mark: not mark.system)  # stable: system parts first
    first = next((i for i, m in enumerate(ordered) if m.ttl == CACHE_5M), len(ordered))
    for mark in ordered[first + 1 :]:
        if mark.ttl == CACHE_1H:
            problems.append(
                (
                    f"{mark.field}.cache_control.ttl",
                    f"a 1h mark must come before every 5m mark, and {ordered[first].field}"
                    " is 5m (system messages come first)",
                )
            )
