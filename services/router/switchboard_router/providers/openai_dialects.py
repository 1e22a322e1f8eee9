"""How OpenAI-compatible hosts differ from OpenAI, as data for the one OpenAI chat adapter.

A provider's ``dialect`` (from the catalog; its id when unset) picks a row here; unknown
dialects get :data:`DEFAULT`. Every host reads the same chat-completions body, so a row only
says what differs: which optional parameters the host honours, a few renamed fields, whether
to ask for usage with ``stream_options`` (hosts that always send it, or reject the field, are
not asked), how the host takes a reasoning request, and how the key is sent. Usage parsing
needs no row: the parser reads every place hosts put usage (``usage``, Groq's
``x_groq.usage``, DeepSeek's ``prompt_cache_hit_tokens``).

Reasoning (``reasoning`` in a row's parameters only when the host can take it):

- ``"effort"``: OpenAI's ``reasoning_effort``, with the values the host accepts (``efforts``,
  lowest first). A config that gives a thinking budget (``max_tokens``) instead of an effort
  becomes the effort of that budget (:func:`effort_for`); ``enabled=False`` becomes
  ``"none"`` where the host takes it, else the lowest effort it takes.
- ``"object"``: OpenRouter's ``reasoning`` object, passed as the client gave it.

Prompt-cache marks (``cache_control`` in a row): hosts that take OpenRouter's per-part
``cache_control`` get each marked part's ``{"type": "ephemeral"}`` (``"ttl": "1h"`` for an hour),
and a marked message's content as parts. Every other host gets no marks: OpenAI and DeepSeek
cache prefixes on their own and report the hits (``cached_tokens``, DeepSeek's
``prompt_cache_hit_tokens``), hosts without a prompt cache have no use for them, and
Anthropic's OpenAI-compatible endpoint does not take them (its docs send prompt caching to the
native API, which the Anthropic adapter speaks).

``logprobs`` / ``top_logprobs`` and ``n`` are listed only for hosts whose reference documents
them in OpenAI's form (Groq rejects logprobs and n > 1; Together's ``logprobs`` is a count with
its own response shape; DeepSeek takes no ``n``; Mistral documents no logprobs).

Sources: each host's chat-completions reference (OpenAI, Groq, Together, Fireworks,
DeepInfra, DeepSeek, Mistral and its reasoning page — ``reasoning_effort`` is ``"high"`` or
``"none"`` —, vLLM's OpenAI-compatible server, Ollama's OpenAI compatibility page, OpenRouter's
reasoning-tokens and prompt-caching pages), as of 2026-11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Every optional parameter every chat-completions host takes.
ALL = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "structured_outputs",
    }
)
LOGPROBS = frozenset({"logprobs", "top_logprobs"})
N = frozenset({"n"})
REASONING = frozenset({"reasoning"})

# OpenAI's effort values, lowest first ("none" only on models that can skip reasoning).
OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high")
# What open-weight reasoning models take behind Groq, Together, Fireworks, DeepInfra, vLLM.
OPEN_EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    parameters: frozenset[str]
    # OpenAI's own API takes max_completion_tokens (its reasoning models refuse max_tokens).
    max_tokens_field: str = "max_tokens"
    seed_field: str = "seed"  # Mistral calls it random_seed
    # The tool_choice value for "call at least one tool" (Mistral also accepts "any").
    required_tool_choice: str = "required"
    # Ask for the final usage chunk with stream_options.include_usage.
    ask_stream_usage: bool = True
    # How the host takes the reasoning request ("" when it cannot; see the module doc).
    reasoning: Literal["", "effort", "object"] = ""
    efforts: tuple[str, ...] = ()  # "effort": the values the host accepts, lowest first
    auth: Literal["bearer", "none"] = "bearer"
    # Hosted APIs refuse requests without a key, so the router does not try them without one;
    # self-hosted servers may run without (the key is sent when one is configured).
    key_required: bool = True
    # The host takes OpenRouter's per-part cache_control (see the module doc).
    cache_control: bool = False


# Unknown hosts speak plain OpenAI: logprobs and n are standard fields (a host that rejects
# one answers 400 and the relay falls back); how they take reasoning is unknowable.
DEFAULT = Dialect("default", ALL | LOGPROBS | N)

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            "openai",
            ALL | LOGPROBS | N | REASONING,
            max_tokens_field="max_completion_tokens",
            reasoning="effort",
            efforts=OPENAI_EFFORTS,
        ),
        # Groq rejects logprobs/logit_bias/n>1, reports usage in x_groq.usage as well, and
        # streams gpt-oss reasoning as delta.reasoning by default (no reasoning_format sent:
        # gpt-oss models refuse it).
        Dialect("groq", ALL | REASONING, reasoning="effort", efforts=OPEN_EFFORTS),
        Dialect(
            "together", ALL | N | {"top_k"} | REASONING, reasoning="effort", efforts=OPEN_EFFORTS
        ),
        Dialect(
            "fireworks",
            ALL | LOGPROBS | N | {"top_k"} | REASONING,
            reasoning="effort",
            efforts=OPEN_EFFORTS,
        ),
        Dialect("deepinfra", ALL | {"top_k"} | REASONING, reasoning="effort", efforts=OPEN_EFFORTS),
        # DeepSeek: no seed or n; JSON mode only (no json_schema); cache hits in its own usage
        # fields; deepseek-reasoner always reasons (no parameter to ask for it).
        Dialect(
            "deepseek", (ALL | LOGPROBS) - {"seed", "structured_outputs", "parallel_tool_calls"}
        ),
        # Mistral: random_seed; rejects unknown fields (so no stream_options) and always ends
        # a stream with usage; reasoning_effort is "high" or "none".
        Dialect(
            "mistral",
            ALL | N | REASONING,
            seed_field="random_seed",
            required_tool_choice="any",
            ask_stream_usage=False,
            reasoning="effort",
            efforts=("none", "high"),
        ),
        # vLLM takes a key only when started with --api-key.
        Dialect(
            "vllm",
            ALL | LOGPROBS | N | {"top_k"} | REASONING,
            reasoning="effort",
            efforts=OPEN_EFFORTS,
            key_required=False,
        ),
        # Ollama's OpenAI compatibility: no tool_choice or parallel_tool_calls; no key needed.
        Dialect(
            "ollama", ALL - {"tool_choice", "parallel_tool_calls"}, auth="none", key_required=False
        ),
        # OpenRouter takes its own reasoning object (effort or max_tokens, exclude, enabled).
        # and cache_control on content parts, passed on to the providers that need marks.
        Dialect(
            "openrouter",
            ALL | LOGPROBS | {"top_k"} | REASONING,
            reasoning="object",
            cache_control=True,
        ),
        # The offline demo upstream of `make run` (services/demo) checks no key.
        Dialect("switchboard", ALL, key_required=False),
    )
}


def dialect_for(name: str) -> Dialect:
    return DIALECTS.get(name, DEFAULT)


# A thinking budget's effort (OpenRouter's own mapping run backwards: it gives "low" about a
# fifth of max_tokens, "medium" a half and "high" four fifths of a default 16k-32k budget).
BUDGET_EFFORTS = ((2048, "low"), (8192, "medium"))


def effort_for(budget: int, efforts: tuple[str, ...]) -> str:
    """The host's effort for a thinking budget of ``budget`` tokens."""
    wanted = next((effort for limit, effort in BUDGET_EFFORTS if budget <= limit), "high")
    return nearest_effort(wanted, efforts)


def nearest_effort(wanted: str, efforts: tuple[str, ...]) -> str:
    """``wanted`` if the host takes it, else the closest value it takes (ties go up)."""
    if wanted in efforts:
        return wanted
    order = OPENAI_EFFORTS
    rank = order.index(wanted) if wanted in order else order.index("medium")
    taken = [e for e in efforts if e in order and e != "none"]
    if not taken:
        return efforts[-1]
    return min(taken, key=lambda e: (abs(order.index(e) - rank), -order.index(e)))
