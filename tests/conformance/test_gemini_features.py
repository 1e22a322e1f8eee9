"""The Gemini adapter against its fake, for what only Gemini does: thought summaries relayed as
reasoning, thought signatures carried to the client and sent back on the next turn (a tool-use
turn that Gemini 3 refuses without them), and the ``reasoning`` parameter in the request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.canonical import (
    GEMINI_REASONING,
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    ReasoningConfig,
    ReasoningDelta,
    ReasoningEffort,
    Role,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    reasoning_blocks,
)
from switchboard_router.providers.base import Target, UpstreamBadRequest, UpstreamError
from switchboard_router.providers.gemini import GeminiAdapter
from switchboard_router.providers.guard import guarded
from switchboard_router.providers.http import create_session
from tests.fakes import gemini_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, signature_for

THOUGHTS = ("The user wants the weather; ", "call get_weather for Oslo.")
CALL = ScriptToolCall("call_w", "get_weather", ('{"city": "Oslo"}',))
TOOLS = (Tool("get_weather", "Weather in a city", {"type": "object"}),)
QUESTION = Message.of(Role.USER, "Weather in Oslo?")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as http:
        yield http


async def turn(
    session: aiohttp.ClientSession,
    fake: FakeProvider,
    messages: tuple[Message, ...],
    model: str = "gemini-2.5-flash",
    reasoning: ReasoningConfig | None = None,
) -> list[AdapterEvent]:
    """One request through the adapter as the relay runs it; raises the provider's error."""
    request = CompletionRequest(
        model="google/x", messages=messages, tools=TOOLS, reasoning=reasoning
    )
    target = Target("google", fake.base_url, model, Secret("k"))
    adapter = GeminiAdapter(session)
    return [e async for e in guarded(adapter.stream(request, target, timeout=10.0), "google")]


def assistant_turn(events: list[AdapterEvent]) -> Message:
    """The assistant message a client sends back: text, calls with their signatures, and the
    reasoning blocks the relay assembled from the reasoning pieces."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    pieces = [e for e in events if isinstance(e, ReasoningDelta)]
    return Message.of(
        Role.ASSISTANT,
        text,
        tool_calls=tuple(ToolCall(c.id, c.name, c.arguments, c.signature) for c in calls),
        reasoning=reasoning_blocks(pieces),
    )


def signed_script() -> Script:
    return Script(
        text=(), reasoning=THOUGHTS, tool_calls=(CALL,), finish="tool_calls", signed_reasoning=True
    )


async def test_thoughts_are_relayed_as_reasoning_and_the_call_carries_its_signature(
    session: aiohttp.ClientSession,
) -> None:
    async with gemini_server.serve(signed_script()) as fake:
        events = await turn(session, fake, (QUESTION,))
    reply = assistant_turn(events)
    assert reply.reasoning[0].format == GEMINI_REASONING
    assert reply.reasoning[0].text == "".join(THOUGHTS)
    assert [c.signature for c in reply.tool_calls] == [signature_for("".join(THOUGHTS))]
    assert [e for e in events if isinstance(e, FinishEvent)] == [
        FinishEvent(Finish.TOOL_CALLS, "STOP")
    ]


async def test_the_next_turn_sends_the_signed_call_back_and_the_fake_accepts_it(
    session: aiohttp.ClientSession,
) -> None:
    async with gemini_server.serve(signed_script()) as fake:
        first = assistant_turn(await turn(session, fake, (QUESTION,)))
        result = Message.of(Role.TOOL, '{"temp_c": 4}', tool_call_id=first.tool_calls[0].id)
        # The same reasoning, so the fake knows the signature it issued on turn one.
        fake.script = Script(
            text=("It is 4°C in Oslo.",), reasoning=THOUGHTS, signed_reasoning=True
        )
        second = await turn(session, fake, (QUESTION, first, result))
    assert "".join(e.text for e in second if isinstance(e, TextDelta)) == "It is 4°C in Oslo."
    model_parts = fake.requests[-1].body["contents"][1]["parts"]
    assert model_parts[0] == {"text": "".join(THOUGHTS), "thought": True}
    assert model_parts[1]["thoughtSignature"] == signature_for("".join(THOUGHTS))


async def test_a_turn_without_the_signature_is_refused_as_gemini_refuses_it(
    session: aiohttp.ClientSession,
) -> None:
    async with gemini_server.serve(signed_script()) as fake:
        first = assistant_turn(await turn(session, fake, (QUESTION,)))
        stripped = Message(
            Role.ASSISTANT,
            (),
            tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in first.tool_calls),
        )
        result = Message.of(Role.TOOL, '{"temp_c": 4}', tool_call_id=first.tool_calls[0].id)
        with pytest.raises(UpstreamError) as refused:
            await turn(session, fake, (QUESTION, stripped, result))
    assert isinstance(refused.value, UpstreamBadRequest)
    assert "missing a thought_signature" in str(refused.value)


async def test_gemini_3_history_from_elsewhere_gets_the_documented_placeholder(
    session: aiohttp.ClientSession,
) -> None:
    foreign = Message(Role.ASSISTANT, (), tool_calls=(ToolCall("c1", "get_weather", "{}"),))
    result = Message.of(Role.TOOL, '{"temp_c": 4}', tool_call_id="c1")
    async with gemini_server.serve(Script(signed_reasoning=True)) as fake:
        events = await turn(session, fake, (QUESTION, foreign, result), model="gemini-3-pro")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == Script().full_text


async def test_a_signed_text_turn_round_trips_its_text_signature(
    session: aiohttp.ClientSession,
) -> None:
    script = Script(text=("Hello", "!"), reasoning=("Greet.",), signed_reasoning=True)
    async with gemini_server.serve(script) as fake:
        first = assistant_turn(await turn(session, fake, (QUESTION,)))
        assert [b.signature for b in first.reasoning if not b.text] == [signature_for("Greet.")]
        await turn(session, fake, (QUESTION, first, Message.of(Role.USER, "Thanks")))
    parts = fake.requests[-1].body["contents"][1]["parts"]
    assert parts[-1] == {"text": "Hello!", "thoughtSignature": signature_for("Greet.")}


async def test_the_reasoning_parameter_reaches_the_request_as_a_thinking_config(
    session: aiohttp.ClientSession,
) -> None:
    async with gemini_server.serve(Script()) as fake:
        await turn(
            session,
            fake,
            (QUESTION,),
            model="gemini-3-flash-preview",
            reasoning=ReasoningConfig(effort=ReasoningEffort.LOW),
        )
    config = fake.requests[-1].body["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingLevel": "low", "includeThoughts": True}
