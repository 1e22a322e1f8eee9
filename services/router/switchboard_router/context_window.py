"""Prompts that cannot fit a model's context window are refused before any upstream call.

The router has no tokenizer for every model, so it counts what a prompt must at least be:
its UTF-8 bytes divided by :data:`MAX_BYTES_PER_TOKEN`. Real tokenizers average three to
four bytes a token on English and code and about one to three on other scripts; runs of
whitespace or repeated characters reach ten or more bytes in one token only in odd text. The
floor is therefore low on purpose: a prompt over it is certainly too long (a 1 MB prompt is at
least 100k tokens and is refused for an 8k model), and one under it is sent, where the provider
has the last word (its context-length error is mapped to ``CONTEXT_LENGTH_EXCEEDED`` too).

Endpoints whose window is smaller than the floor are dropped from the plan; when none is
left the request is refused with ``INVALID_ARGUMENT`` (reason ``CONTEXT_LENGTH_EXCEEDED``),
naming the counts.
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


def within_context(request: CompletionRequest, routes: list[Route]) -> list[Route]:
    """The routes whose context window can hold the prompt; refuses when none can."""
    floor, size = prompt_floor_tokens(request)
    fitting = [r for r in routes if not r.context_length or r.context_length >= floor]
    if fitting or not routes:
        return fitting
    largest = max(r.context_length for r in routes)
    raise ContextLengthExceeded(
        [
            (
                "messages",
                f"the prompt is {size:,} bytes, at least {floor:,} tokens; the largest context"
                f" window of the requested models' endpoints is {largest:,} tokens",
            )
        ]
    )
