"""How OpenAI-compatible hosts differ from OpenAI, as data for the one OpenAI chat adapter.

A provider's ``dialect`` (from the catalog; its id when unset) picks a row here; unknown
dialects get :data:`DEFAULT`. Every host reads the same chat-completions body, so a row only
says what differs: which optional parameters the host honours, a few renamed fields, whether
to ask for usage with ``stream_options`` (hosts that always send it, or reject the field, are
not asked), and how the key is sent. Usage parsing needs no row: the parser reads every place
hosts put usage (``usage``, Groq's ``x_groq.usage``, DeepSeek's ``prompt_cache_hit_tokens``).

Sources: each host's chat-completions reference (OpenAI, Groq, Together, Fireworks,
DeepInfra, DeepSeek, Mistral, vLLM's OpenAI-compatible server, Ollama's OpenAI
compatibility page), as of 2026-11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Every optional parameter the chat-completions body can carry.
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
    auth: Literal["bearer", "none"] = "bearer"
    # Hosted APIs refuse requests without a key, so the router does not try them without one;
    # self-hosted servers may run without (the key is sent when one is configured).
    key_required: bool = True


DEFAULT = Dialect("default", ALL)

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect("openai", ALL, max_tokens_field="max_completion_tokens"),
        # Groq rejects logprobs/logit_bias/n>1 and reports usage in x_groq.usage as well.
        Dialect("groq", ALL),
        Dialect("together", ALL | {"top_k"}),
        Dialect("fireworks", ALL | {"top_k"}),
        Dialect("deepinfra", ALL | {"top_k"}),
        # DeepSeek: no seed; JSON mode only (no json_schema); cache hits in its own usage fields.
        Dialect("deepseek", ALL - {"seed", "structured_outputs", "parallel_tool_calls"}),
        # Mistral: random_seed; rejects unknown fields (so no stream_options) and always ends
        # a stream with usage.
        Dialect(
            "mistral",
            ALL,
            seed_field="random_seed",
            required_tool_choice="any",
            ask_stream_usage=False,
        ),
        # vLLM takes a key only when started with --api-key.
        Dialect("vllm", ALL | {"top_k"}, key_required=False),
        # Ollama's OpenAI compatibility: no tool_choice or parallel_tool_calls; no key needed.
        Dialect(
            "ollama", ALL - {"tool_choice", "parallel_tool_calls"}, auth="none", key_required=False
        ),
        # The offline demo upstream of `make run` (services/demo) checks no key.
        Dialect("switchboard", ALL, key_required=False),
    )
}


def dialect_for(name: str) -> Dialect:
    return DIALECTS.get(name, DEFAULT)
