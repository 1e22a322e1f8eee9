"""Bad requests are refused with every bad field named."""

from __future__ import annotations

from decimal import Decimal

import pytest

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import Role
from switchboard_router.requests import parse_request


def user(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)


def violations(request: router_pb2.StreamCompletionRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(request)
    return dict(caught.value.violations)


def test_a_good_request_becomes_canonical() -> None:
    request = router_pb2.StreamCompletionRequest(
        model="openai/gpt-4o-mini",
        messages=[
            common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="be brief"),
            user("hi"),
        ],
        max_tokens=64,
        temperature=0.0,
        stop=["\n\n"],
        fallback_models=["anthropic/claude-3.5-haiku"],
        provider=router_pb2.ProviderPreferences(
            order=["openai"],
            allow_fallbacks=False,
            max_price=router_pb2.MaxPrice(prompt_usd_per_mtok="0.5"),
        ),
    )
    parsed = parse_request(request)
    assert parsed.messages[0].role is Role.SYSTEM
    assert parsed.max_tokens == 64
    assert parsed.temperature == 0.0  # explicitly zero is kept, not dropped as "unset"
    assert parsed.top_p is None
    assert parsed.provider.allow_fallbacks is False
    assert parsed.provider.max_prompt_price == Decimal("0.5")
    assert parsed.set_parameters() == {"max_tokens", "temperature", "stop"}


def test_every_bad_field_is_named_at_once() -> None:
    request = router_pb2.StreamCompletionRequest(
        model="",
        messages=[common_pb2.ChatMessage(content="no role"), user("ok")],
        max_tokens=0,
        temperature=3.5,
        top_p=0.0,
        stop=["a", "b", "c", "d", "e"],
        fallback_models=["not a model"],
        provider=router_pb2.ProviderPreferences(
            max_price=router_pb2.MaxPrice(completion_usd_per_mtok="1e-3")
        ),
    )
    found = violations(request)
    assert set(found) == {
        "model",
        "messages[0].role",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "fallback_models[0]",
        "provider.max_price.completion_usd_per_mtok",
    }
    assert found["model"] == "required"


def test_no_messages_and_tool_message_without_call_id() -> None:
    assert "messages" in violations(router_pb2.StreamCompletionRequest(model="a/b"))
    tool = common_pb2.ChatMessage(role=common_pb2.ROLE_TOOL, content="{}")
    found = violations(router_pb2.StreamCompletionRequest(model="a/b", messages=[tool]))
    assert set(found) == {"messages[0].tool_call_id"}


def test_create_and_stream_requests_parse_alike() -> None:
    fields = {"model": "a/b", "messages": [user("x")], "seed": 7}
    stream = parse_request(router_pb2.StreamCompletionRequest(**fields))  # type: ignore[arg-type]
    unary = parse_request(router_pb2.CreateCompletionRequest(**fields))  # type: ignore[arg-type]
    assert stream == unary
    assert stream.seed == 7
