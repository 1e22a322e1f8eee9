"""Prompts too long for every endpoint's context window are refused before anything is sent."""

from __future__ import annotations

import dataclasses

import pytest

from switchboard_router.canonical import CompletionRequest, ImagePart, Message, Role, TextPart
from switchboard_router.context_window import (
    MAX_BYTES_PER_TOKEN,
    ContextLengthExceeded,
    prompt_floor_tokens,
    within_context,
)
from tests.unit.test_router_routing import route

SMALL = dataclasses.replace(route("a/small", "p", "1", "1"), context_length=8192)
LARGE = dataclasses.replace(route("a/large", "q", "1", "1"), context_length=200_000)


def ask(text: str) -> CompletionRequest:
    return CompletionRequest(model="a/small", messages=(Message.of(Role.USER, text),))


def test_a_megabyte_prompt_is_refused_for_an_8k_model_with_the_counts() -> None:
    with pytest.raises(ContextLengthExceeded) as refused:
        within_context(ask("x" * 1_000_000), [SMALL])
    error = refused.value
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert error.violations[0][0] == "messages"
    assert "1,000,000 bytes" in error.message
    assert "100,000 tokens" in error.message
    assert "8,192 tokens" in error.message


def test_endpoints_too_small_are_dropped_and_the_others_kept() -> None:
    assert within_context(ask("x" * 1_000_000), [SMALL, LARGE]) == [LARGE]


def test_a_prompt_that_may_fit_is_sent() -> None:
    """The floor is low on purpose: 40 kB may be 4k tokens, so the 8k endpoint gets it."""
    assert within_context(ask("x" * 40_000), [SMALL]) == [SMALL]


def test_unknown_context_lengths_are_not_filtered() -> None:
    unknown = dataclasses.replace(SMALL, context_length=0)
    assert within_context(ask("x" * 1_000_000), [unknown]) == [unknown]


def test_multibyte_text_counts_its_bytes_and_images_count_too() -> None:
    text = "漢" * 1000  # 3,000 bytes
    image = ImagePart(url="https://example.com/a.png")
    request = CompletionRequest(
        model="a/small",
        messages=(Message(Role.USER, (TextPart(text), image, image)),),
    )
    floor, size = prompt_floor_tokens(request)
    assert size == 3000
    assert floor == 3000 // MAX_BYTES_PER_TOKEN + 2 * 64
