"""Prompt token estimates: the likely count for unreported usage, and the generous count that
reservations use (which must not undercount CJK text or images)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from switchboard_router.canonical import CompletionRequest, ImagePart, Message, Role, TextPart, Tool
from switchboard_router.usage_estimate import (
    estimate_prompt_tokens,
    reservation_prompt_tokens,
)


def request(*messages: Message, tools: tuple[Tool, ...] = ()) -> CompletionRequest:
    return CompletionRequest(model="m", messages=messages, tools=tools)


def test_english_is_about_four_characters_a_token_and_reserved_generously() -> None:
    english = request(Message.of(Role.USER, "The quick brown fox jumps over the lazy dog. " * 20))
    # 900 characters + 16 of framing.
    assert estimate_prompt_tokens(english) == 229
    assert reservation_prompt_tokens(english) == 306


def test_cjk_is_reserved_at_about_a_token_a_character() -> None:
    text = "日本語のテキストはトークンが多い" * 10  # 160 characters, 480 UTF-8 bytes
    cjk = request(Message.of(Role.USER, text))
    assert estimate_prompt_tokens(cjk) == 44  # what four characters a token would say
    assert reservation_prompt_tokens(cjk) == 166  # (480 + 16) / 3, rounded up
    assert reservation_prompt_tokens(cjk) >= len(text)


def test_images_and_tools_count() -> None:
    picture = Message(Role.USER, (TextPart("what is this?"), ImagePart(url="https://x/y.png")))
    tool = Tool(name="get_weather", description="Weather for a city")
    with_both = request(picture, tools=(tool,))
    assert estimate_prompt_tokens(with_both) > 1000
    assert reservation_prompt_tokens(with_both) > 1600
    assert reservation_prompt_tokens(with_both) > reservation_prompt_tokens(request(picture))


@given(st.lists(st.text(max_size=200), min_size=1, max_size=5))
def test_a_reservation_never_counts_fewer_tokens_than_the_estimate(texts: list[str]) -> None:
    made = request(*(Message.of(Role.USER, text) for text in texts))
    assert reservation_prompt_tokens(made) >= estimate_prompt_tokens(made)
