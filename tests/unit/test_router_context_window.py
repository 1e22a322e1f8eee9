"""Prompts too long for every endpoint's context window, and ``max_tokens`` beyond every
endpoint's output limit, are refused before anything is sent, with the counts."""

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


def ask_for(text: str, max_tokens: int) -> CompletionRequest:
    return dataclasses.replace(ask(text), max_tokens=max_tokens)


def test_endpoints_that_cannot_write_max_tokens_are_skipped() -> None:
    short = dataclasses.replace(LARGE, max_completion_tokens=4096)
    long = dataclasses.replace(SMALL, endpoint_id="long", max_completion_tokens=8192)
    assert within_context(ask_for("hi", 8000), [short, long]) == [long]
    assert within_context(ask_for("hi", 4096), [short, long]) == [short, long]
    # No cap of its own: the context window bounds the output.
    uncapped = dataclasses.replace(SMALL, max_completion_tokens=0)
    assert within_context(ask_for("hi", 8192), [uncapped]) == [uncapped]
    with pytest.raises(ContextLengthExceeded):
        within_context(ask_for("hi", 8193), [uncapped, short])


def test_max_tokens_no_endpoint_can_write_is_refused_naming_the_field_and_the_counts() -> None:
    short = dataclasses.replace(LARGE, max_completion_tokens=4096)
    small = dataclasses.replace(SMALL, max_completion_tokens=0)  # 8,192 by its window
    with pytest.raises(ContextLengthExceeded) as refused:
        within_context(ask_for("hi", 50_000), [short, small])
    error = refused.value
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert error.code.name == "INVALID_ARGUMENT"
    assert error.violations == [
        (
            "max_tokens",
            "max_tokens is 50,000; the largest output limit of the requested models'"
            " endpoints is 8,192 tokens",
        )
    ]


def test_a_prompt_and_max_tokens_that_fit_nowhere_name_both_fields() -> None:
    small = dataclasses.replace(SMALL, max_completion_tokens=1024)
    with pytest.raises(ContextLengthExceeded) as refused:
        within_context(ask_for("x" * 1_000_000, 2048), [small])
    fields = dict(refused.value.violations)
    assert list(fields) == ["messages", "max_tokens"]
    assert "100,000 tokens" in fields["messages"] and "8,192 tokens" in fields["messages"]
    assert "2,048" in fields["max_tokens"] and "1,024 tokens" in fields["max_tokens"]


def test_when_each_limit_fits_somewhere_but_never_both_the_counts_say_so() -> None:
    """The large window writes little; the endpoint that writes much cannot hold the prompt."""
    roomy = dataclasses.replace(LARGE, max_completion_tokens=1024)
    writer = dataclasses.replace(SMALL, max_completion_tokens=8192)
    with pytest.raises(ContextLengthExceeded) as refused:
        within_context(ask_for("x" * 1_000_000, 4096), [roomy, writer])
    ((field, why),) = refused.value.violations
    assert field == "max_tokens"
    assert "max_tokens is 4,096" in why
    assert "at least 100,000 tokens" in why
    assert "write at most 1,024 tokens" in why
