"""Extended thinking end to end: the adapter against the fake Anthropic server.

Turn 1 streams signed and redacted thinking with a tool call; the client's next turn sends the
blocks back (assembled with :func:`reasoning_blocks`, as the relay does) with the tool result,
and the fake accepts it only when the blocks are the ones it signed, first in the assistant
turn, as Anthropic does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningDelta,
    ReasoningEffort,
    Role,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    reasoning_blocks,
)
from switchboard_router.providers.anthropic_messages import AnthropicMessagesAdapter
from switchboard_router.providers.base import Target, UpstreamBadRequest, UpstreamError
from switchboard_router.providers.guard import guarded
from switchboard_router.providers.http import create_session
from tests.fakes import anthropic_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, signature_for

THOUGHT = ("The user wants ", "Oslo's weather: ", "call get_weather.")
TURN_ONE = Script(
    reasoning=THOUGHT,
    signed_reasoning=True,
    redacted_reasoning=("EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP",),
    text=("Let me check.",),
    tool_calls=(ScriptToolCall("toolu_oslo", "get_weather", ('{"city": ', '"Oslo"}')),),
    finish="tool_calls",
)
TURN_TWO = dataclasses.replace(TURN_ONE, text=("It is 4°C in Oslo.",), tool_calls=(), finish="stop")
WEATHER = Tool("get_weather", "Weather", {"type": "object"})
QUESTION = Message.of(Role.USER, "What is the weather in Oslo?")
THINK = ReasoningConfig(effort=ReasoningEffort.HIGH)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as http:
        yield http


async def run(
    session: aiohttp.ClientSession, fake: FakeProvider, messages: tuple[Message, ...]
) -> list[AdapterEvent]:
    request = CompletionRequest(
        model="anthropic/claude",
        messages=messages,
        max_tokens=4000,
        tools=(WEATHER,),
        reasoning=THINK,
    )
    target = Target("anthropic", fake.base_url, "claude-x", Secret("sk-test"))
    stream = AnthropicMessagesAdapter(session).stream(request, target, timeout=10)
    return [event async for event in guarded(stream, "anthropic")]


def answer(events: list[AdapterEvent], blocks: tuple[ReasoningBlock, ...]) -> Message:
    """The assistant message a client sends back: the text, the call and the blocks."""
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    call = next(e for e in events if isinstance(e, ToolCallDelta) and e.id)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return Message(
        Role.ASSISTANT,
        (TextPart(text),),
        tool_calls=(ToolCall(call.id, call.name, arguments),),
        reasoning=blocks,
    )


def follow_up(message: Message) -> tuple[Message, ...]:
    return (QUESTION, message, Message.of(Role.TOOL, '{"temp_c": 4}', tool_call_id="toolu_oslo"))


async def first_turn(session: aiohttp.ClientSession, fake: FakeProvider) -> list[AdapterEvent]:
    events = await run(session, fake, (QUESTION,))
    sent: dict[str, Any] = fake.requests[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 3200}  # 80% of 4000
    assert events[-1] == FinishEvent(Finish.TOOL_CALLS, "tool_use")
    return events


async def test_signed_thinking_goes_back_with_the_tool_result_and_the_provider_accepts_it(
    session: aiohttp.ClientSession,
) -> None:
    async with anthropic_server.serve(TURN_ONE) as fake:
        events = await first_turn(session, fake)
        blocks = reasoning_blocks([e for e in events if isinstance(e, ReasoningDelta)])
        assert blocks == (
            ReasoningBlock(ANTHROPIC_REASONING, redacted=TURN_ONE.redacted_reasoning[0]),
            ReasoningBlock(
                ANTHROPIC_REASONING, "".join(THOUGHT), signature=signature_for("".join(THOUGHT))
            ),
        )
        fake.script = TURN_TWO
        second = await run(session, fake, follow_up(answer(events, blocks)))
    assert "".join(e.text for e in second if isinstance(e, TextDelta)) == "It is 4°C in Oslo."
    sent = fake.requests[-1].body
    assert "thinking" in sent
    assert [b["type"] for b in sent["messages"][1]["content"]] == [
        "redacted_thinking",
        "thinking",
        "text",
        "tool_use",
    ]
    assert sent["messages"][1]["content"][3]["input"] == {"city": "Oslo"}


async def test_a_tampered_signature_is_refused_as_anthropic_refuses_it(
    session: aiohttp.ClientSession,
) -> None:
    async with anthropic_server.serve(TURN_ONE) as fake:
        events = await first_turn(session, fake)
        redacted, thinking = reasoning_blocks([e for e in events if isinstance(e, ReasoningDelta)])
        forged = dataclasses.replace(thinking, text=thinking.text + " (edited)")
        with pytest.raises(UpstreamBadRequest, match="Invalid `signature` in `thinking` block"):
            await run(session, fake, follow_up(answer(events, (redacted, forged))))


async def test_without_the_blocks_the_turn_goes_without_thinking_and_is_accepted(
    session: aiohttp.ClientSession,
) -> None:
    async with anthropic_server.serve(TURN_ONE) as fake:
        events = await first_turn(session, fake)
        fake.script = TURN_TWO
        # A client that dropped the blocks (or switched from another provider mid-turn).
        second = await run(session, fake, follow_up(answer(events, ())))
    assert isinstance(second[-1], FinishEvent) and second[-1].reason == Finish.STOP
    assert "thinking" not in fake.requests[-1].body


async def test_the_fake_refuses_an_unsigned_tool_turn_with_thinking_on(
    session: aiohttp.ClientSession,
) -> None:
    """What the adapter avoids: the same turn sent with thinking on, as a raw request."""
    async with anthropic_server.serve(TURN_TWO) as fake:
        body = {
            "model": "claude-x",
            "max_tokens": 4000,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_oslo", "name": "get_weather", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": "4"}
                    ],
                },
            ],
        }
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        async with session.post(fake.base_url + "/messages", json=body, headers=headers) as reply:
            assert reply.status == 400
            error = (await reply.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`,"
        " but found `tool_use`."
    )


@pytest.mark.parametrize(
    ("max_tokens", "reasoning"),
    [
        (16, ReasoningConfig(effort=ReasoningEffort.MINIMAL)),
        (1024, ReasoningConfig(max_tokens=1024)),
        (64_000, ReasoningConfig(max_tokens=200_000)),
        (8000, ReasoningConfig()),
    ],
)
async def test_every_budget_the_adapter_sends_is_one_anthropic_accepts(
    session: aiohttp.ClientSession, max_tokens: int, reasoning: ReasoningConfig
) -> None:
    async with anthropic_server.serve(Script()) as fake:
        request = CompletionRequest(
            model="a/b", messages=(QUESTION,), max_tokens=max_tokens, reasoning=reasoning
        )
        target = Target("anthropic", fake.base_url, "claude-x", Secret("k"))
        try:
            events = [
                e
                async for e in AnthropicMessagesAdapter(session).stream(request, target, timeout=10)
            ]
        except UpstreamError as error:  # pragma: no cover - the assertion's message
            pytest.fail(f"the fake refused the body: {error}")
    assert events[-1] == FinishEvent(Finish.STOP, "end_turn")
