"""Prompts that cannot fit a model's context window are refused before any upstream call.

The router has no tokenizer for every model, so it counts what a prompt must at least be:
its UTF-8 bytes divided by :data:`MAX_BYTES_PER_TOKEN`. Real tokenizers average three to
four bytes a token on English and code and about one to three on other scripts; runs of
whitespace or repeated characters reach ten or more bytes in one token only in odd text. The
floor is therefore low on purpose: a prompt over it is certainly too long (a 1 MB prompt is at
least 100k tokens and is refused for an 8k model), and one under it is sent, where the provider
has the last word (its context-length error is mapped to ``CONTEXT_LENGTH_EXCEEDED`` too).

Endpoints whose window is smaller than the floor are dropped from the plan, and so are those
that cannot write the request's ``max_tokens`` (OpenRouter routes a ``max_tokens`` only to
endpoints that support a response of that length): the endpoint's ``max_completion_tokens``,
else (0: no limit of its own) its context window, is below it. When none is left the request
is refused with ``INVALID_ARGUMENT`` (reason ``CONTEXT_LENGTH_EXCEEDED``), naming the field
(``messages`` for the prompt, ``max_tokens`` for the output) and the counts: the prompt's
bytes and token floor, ``max_tokens``, and the largest window or output limit on offer. A
reasoning budget is not added to ``max_tokens`` here: providers count it differently.
"""

from __future__ import annotations

from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import CompletionRequest
from switchboard_router.catalog_cache import Route
from switchboard_router.usage_estimate import image_count, prompt_bytes

MAX_BYTES_PER_TOKEN = 10
# The fewest tokens any provider counts for one image (OpenAI's low detail is 85).
MIN_IMAGE_TOKENS = 64


class ContextLengthExceeded(InvalidArgument):
    reason = "CONTEXT_LENGTH_EXCEEDED"


def prompt_floor_tokens(request: CompletionRequest) -> tuple[int, int]:
    """(the fewest tokens the prompt can be, its size in bytes)."""
    size = prompt_bytes(request)
    return size // MAX_BYTES_PER_TOKEN + image_count(request) * MIN_IMAGE_TOKENS, size


def output_cap(route: Route) -> int:
    """The most tokens the endpoint can write: its ``max_completion_tokens``, else (0: no
    limit below the window) its context window; 0 when neither is known."""
    return route.max_completion_tokens or route.context_length


def within_context(request: CompletionRequest, routes: list[Route]) -> list[Route]:
    """The routes that can hold the prompt and write ``max_tokens``, in their order; refuses
    (with the counts) when none can."""
    floor, size = prompt_floor_tokens(request)
    wanted = request.max_tokens or 0

    def holds_prompt(route: Route) -> bool:
        return not route.context_length or route.context_length >= floor

    def holds_output(route: Route) -> bool:
        cap = output_cap(route)
        return not wanted or not cap or cap >= wanted

    fitting = [r for r in routes if holds_prompt(r) and holds_output(r)]
    if fitting or not routes:
        return fitting
    problems: list[tuple[str, str]] = []
    prompt = f"the prompt is {size:,} bytes, at least {floor:,} tokens"
    if not any(holds_prompt(r) for r in routes):
        largest = max(r.context_length for r in routes)
        problems.append(
            (
                "messages",
                f"{prompt}; the largest context window of the requested models' endpoints is"
                f" {largest:,} tokens",
            )
        )
    if not any(holds_output(r) for r in routes):
        largest = max(output_cap(r) for r in routes)
        problems.append(
            (
                "max_tokens",
                f"max_tokens is {wanted:,}; the largest output limit of the requested models'"
                f" endpoints is {largest:,} tokens",
            )
        )
    if not problems:  # each fits somewhere, never both on one endpoint
        largest = max(output_cap(r) for r in routes if holds_prompt(r))
        problems.append(
            (
                "max_tokens",
                f"max_tokens is {wanted:,}; {prompt}, and the endpoints whose context window"
                f" can hold it write at most {largest:,} tokens",
            )
        )
    raise ContextLengthExceeded(problems)
