"""The reasoning, log-probability and choice-count options, and reasoning blocks sent back on
an assistant turn: good ones become canonical, bad ones are refused naming the field."""

from __future__ import annotations

import pytest

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    GEMINI_REASONING,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningEffort,
    ToolCall,
)
from switchboard_router.requests import parse_request

Reasoning = router_pb2.Reasoning
Detail = common_pb2.ReasoningDetail


def user(text: str = "hi") -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)


def request(**fields: object) -> router_pb2.StreamCompletionRequest:
    fields.setdefault("messages", [user()])
    return router_pb2.StreamCompletionRequest(model="x/y", **fields)  # type: ignore[arg-type]


def violations(req: router_pb2.StreamCompletionRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(req)
    return dict(caught.value.violations)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Reasoning(effort=Reasoning.EFFORT_HIGH), ReasoningConfig(ReasoningEffort.HIGH)),
        (Reasoning(max_tokens=2048, exclude=True), ReasoningConfig(None, 2048, exclude=True)),
        (Reasoning(), ReasoningConfig()),
        (Reasoning(enabled=False), ReasoningConfig(enabled=False)),
        (
            Reasoning(effort=Reasoning.EFFORT_NONE),
            ReasoningConfig(ReasoningEffort.NONE, enabled=False),
        ),
    ],
)
def test_reasoning_options_become_canonical(given: Reasoning, expected: ReasoningConfig) -> None:
    parsed = parse_request(request(reasoning=given))
    assert parsed.reasoning == expected
    assert "reasoning" in parsed.set_parameters()


def test_no_reasoning_object_means_the_providers_default() -> None:
    parsed = parse_request(request())
    assert parsed.reasoning is None
    assert "reasoning" not in parsed.set_parameters()


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (Reasoning(effort=99), "reasoning.effort"),  # type: ignore[arg-type]
        (Reasoning(max_tokens=0), "reasoning.max_tokens"),
        (Reasoning(max_tokens=2**31 - 1), "reasoning.max_tokens"),
        (Reasoning(effort=Reasoning.EFFORT_LOW, max_tokens=100), "reasoning.max_tokens"),
        (Reasoning(enabled=False, effort=Reasoning.EFFORT_HIGH), "reasoning.enabled"),
        (Reasoning(enabled=False, max_tokens=500), "reasoning.enabled"),
    ],
)
def test_bad_reasoning_options_are_refused_by_field(given: Reasoning, field: str) -> None:
    assert field in violations(request(reasoning=given))


def test_logprobs_and_choices() -> None:
    parsed = parse_request(request(logprobs=True, top_logprobs=5, n=3))
    assert (parsed.logprobs, parsed.top_logprobs, parsed.n) == (True, 5, 3)
    assert {"logprobs", "top_logprobs", "n"} <= parsed.set_parameters()
    assert parse_request(request(n=1)).n is None  # one choice is the default: nothing to ask


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"n": -5}, "n"),
    ],
)
def test_bad_logprobs_and_choice_counts_are_refused_by_field(
    fields: dict[str, object], field: str
) -> None:
    assert field in violations(request(**fields))


def assistant(**fields: object) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, **fields)  # type: ignore[arg-type]


def test_reasoning_blocks_and_call_signatures_come_back_on_the_assistant_turn() -> None:
    turn = assistant(
        reasoning_details=[
            Detail(format=ANTHROPIC_REASONING, text="Let me check.", signature="c2ln"),
            Detail(format=ANTHROPIC_REASONING, redacted_data="ZW5j"),
        ],
        tool_calls=[
            common_pb2.ToolCall(id="c1", name="lookup", arguments_json="{}", signature="dGhv")
        ],
    )
    tool = common_pb2.ChatMessage(role=common_pb2.ROLE_TOOL, tool_call_id="c1", content="42")
    parsed = parse_request(request(messages=[user(), turn, tool]))
    message = parsed.messages[1]
    assert message.reasoning == (
        ReasoningBlock(ANTHROPIC_REASONING, "Let me check.", "c2ln"),
        ReasoningBlock(ANTHROPIC_REASONING, redacted="ZW5j"),
    )
    assert message.tool_calls == (ToolCall("c1", "lookup", "{}", "dGhv"),)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            common_pb2.ChatMessage(
                role=common_pb2.ROLE_USER,
                content="hi",
                reasoning_details=[Detail(format=GEMINI_REASONING, text="x")],
            ),
            "messages[0].reasoning_details",
        ),
        (
            assistant(reasoning_details=[Detail(format="openai", text="x")]),
            "messages[0].reasoning_details[0].format",
        ),
        (
            assistant(reasoning_details=[Detail(format=GEMINI_REASONING)]),
            "messages[0].reasoning_details[0]",
        ),
        (
            assistant(reasoning_details=[Detail(format=GEMINI_REASONING, text="x")] * 65),
            "messages[0].reasoning_details",
        ),
        (
            assistant(
                tool_calls=[
                    common_pb2.ToolCall(id="c", name="f", signature="s" * (1024 * 1024 + 1))
                ]
            ),
            "messages[0].tool_calls[0].signature",
        ),
    ],
)
def test_bad_reasoning_blocks_are_refused_by_field(
    message: common_pb2.ChatMessage, field: str
) -> None:
    assert field in violations(request(messages=[message]))
