"""Prompt-cache marks: ``ContentPart.cache_control`` becomes a part's ``cache``, under
Anthropic's rules (at most 4, known TTLs, no 1-hour mark after a 5-minute one)."""

from __future__ import annotations

import pytest

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import CACHE_1H, CACHE_5M, ImagePart, TextPart
from switchboard_router.requests import parse_request

TTL = common_pb2.CacheControl
PNG = common_pb2.ImagePart(data=b"\x89PNG", mime_type="image/png")


def text(value: str, ttl: int | None = None) -> common_pb2.ContentPart:
    part = common_pb2.ContentPart(text=value)
    if ttl is not None:
        part.cache_control.ttl = ttl  # type: ignore[assignment]
    return part


def message(role: int, *parts: common_pb2.ContentPart) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, parts=parts)  # type: ignore[arg-type]


def request(*messages: common_pb2.ChatMessage) -> router_pb2.StreamCompletionRequest:
    return router_pb2.StreamCompletionRequest(model="anthropic/claude-x", messages=messages)


def violations(given: router_pb2.StreamCompletionRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(given)
    return dict(caught.value.violations)


def test_marks_on_system_text_and_image_parts_keep_their_ttl() -> None:
    image = common_pb2.ContentPart(image=PNG, cache_control=common_pb2.CacheControl())
    parsed = parse_request(
        request(
            message(common_pb2.ROLE_SYSTEM, text("rules", TTL.TTL_1H), text("today")),
            message(common_pb2.ROLE_USER, text("a long document", TTL.TTL_5M), image),
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="question"),
        )
    )
    system, document, question = parsed.messages
    assert system.parts == (TextPart("rules", CACHE_1H), TextPart("today"))
    assert document.parts[0] == TextPart("a long document", CACHE_5M)
    image_part = document.parts[1]
    assert isinstance(image_part, ImagePart)
    assert image_part.cache == CACHE_5M  # no TTL given: the provider's default, five minutes
    assert question.parts == (TextPart("question"),)
    assert parsed.set_parameters() == frozenset()  # marks are not an optional parameter


def test_at_most_four_marks_and_the_fifth_is_named() -> None:
    parts = [text(f"chunk {i}", TTL.TTL_5M) for i in range(5)]
    found = violations(request(message(common_pb2.ROLE_USER, *parts)))
    assert found == {"messages[0].parts[4].cache_control": "a request takes at most 4 marks"}


def test_a_one_hour_mark_may_not_follow_a_five_minute_one() -> None:
    found = violations(
        request(
            message(common_pb2.ROLE_SYSTEM, text("rules", TTL.TTL_5M)),
            message(common_pb2.ROLE_USER, text("document", TTL.TTL_1H)),
        )
    )
    assert list(found) == ["messages[1].parts[0].cache_control.ttl"]
    assert "messages[0].parts[0] is 5m" in found["messages[1].parts[0].cache_control.ttl"]


def test_system_messages_lead_the_prompt_whatever_their_place_in_the_list() -> None:
    parsed = parse_request(
        request(
            message(common_pb2.ROLE_USER, text("document", TTL.TTL_5M)),
            message(common_pb2.ROLE_SYSTEM, text("rules", TTL.TTL_1H)),
        )
    )
    assert [m.parts[0].cache for m in parsed.messages] == [CACHE_5M, CACHE_1H]


def test_unknown_ttl_and_marked_empty_text_are_refused() -> None:
    found = violations(
        request(message(common_pb2.ROLE_USER, text("document", 9), text("", TTL.TTL_5M)))
    )
    assert found == {
        "messages[0].parts[0].cache_control.ttl": "unknown ttl",
        "messages[0].parts[1].cache_control": "marks an empty text part",
    }
