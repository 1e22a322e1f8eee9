"""OpenAI-format features end to end against the fake: refusals, the (absent) reasoning round
trip, and whole-answer details the recorded streams do not show."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
    LogprobsDelta,
    Message,
    ProviderMetadata,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    Role,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    reasoning_blocks,
)
from switchboard_router.providers.base import Target
from switchboard_router.providers.http import create_session
from switchboard_router.providers.openai_chat import OpenAIChatAdapter
from switchboard_router.providers.openai_stream import StreamParser
from tests.fakes import openai_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall

QUESTION = Message.of(Role.USER, "What is the weather in Oslo?")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as http:
        yield http


async def run(
    session: aiohttp.ClientSession, fake: FakeProvider, *messages: Message
) -> list[AdapterEvent]:
    target = Target("openai", fake.base_url, "gpt-x", Secret("sk-test"), dialect="openai")
    request = CompletionRequest(model="openai/gpt-x", messages=messages or (QUESTION,))
    return [e async for e in OpenAIChatAdapter(session).stream(request, target, timeout=10)]


async def test_a_refusal_reaches_the_client_as_its_own_field_with_the_providers_finish(
    session: aiohttp.ClientSession,
) -> None:
    script = Script(refusal=("I'm sorry, ", "I can't help with that."))
    async with openai_server.serve(script) as fake:
        events = await run(session, fake)
    assert [e for e in events if isinstance(e, RefusalDelta)] == [
        RefusalDelta("I'm sorry, I can't help with that.")
    ]
    assert not [e for e in events if isinstance(e, TextDelta)]
    assert [e for e in events if isinstance(e, FinishEvent)] == [FinishEvent(Finish.STOP, "stop")]


async def test_a_tool_use_turn_goes_back_without_reasoning_and_the_host_accepts_it(
    session: aiohttp.ClientSession,
) -> None:
    call = ScriptToolCall("call_w", "get_weather", ('{"city"', ': "Oslo"}'))
    turn1 = Script(
        reasoning=("The user wants ", "the weather."), tool_calls=(call,), finish="tool_calls"
    )
    async with openai_server.serve(turn1) as fake:
        events = await run(session, fake)
        pieces = [e for e in events if isinstance(e, ReasoningDelta)]
        assert "".join(p.text for p in pieces) == "The user wants the weather."
        # OpenAI-compatible reasoning has no format: nothing to send back.
        assert reasoning_blocks(pieces) == ()
        calls = [e for e in events if isinstance(e, ToolCallDelta)]
        arguments = "".join(c.arguments for c in calls)
        # The client holds blocks of another provider and a call signature from an earlier turn.
        assistant = Message(
            Role.ASSISTANT,
            (),
            tool_calls=(ToolCall(calls[0].id, calls[0].name, arguments, signature="sig-gemini"),),
            reasoning=(ReasoningBlock(ANTHROPIC_REASONING, "earlier thinking", "sig-claude"),),
        )
        result = Message.of(Role.TOOL, '{"temp": 3}', tool_call_id=calls[0].id)
        fake.script = Script(text=("It is 3 degrees.",))
        turn2 = await run(session, fake, QUESTION, assistant, result)
    assert "".join(e.text for e in turn2 if isinstance(e, TextDelta)) == "It is 3 degrees."
    sent = fake.requests[-1].body["messages"][1]
    assert sent == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_w",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }


async def test_the_fake_refuses_a_message_field_openai_does_not_define(
    session: aiohttp.ClientSession,
) -> None:
    async with openai_server.serve(Script()) as fake:
        body = {
            "model": "gpt-x",
            "stream": True,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "reasoning_content": "thinking"},
            ],
        }
        async with session.post(
            fake.base_url + "/chat/completions",
            json=body,
            headers={"Authorization": "Bearer sk-test"},
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert "reasoning_content" in error["message"]


def test_a_whole_answer_keeps_logprobs_citations_and_service_tier() -> None:
    body = b"""{"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-search-preview",
      "service_tier": "default", "system_fingerprint": "fp_1",
      "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "See [docs](https://x.invalid).",
          "annotations": [{"type": "url_citation", "url_citation": {"url": "https://x.invalid",
            "title": "X", "start_index": 4, "end_index": 29}}]},
        "logprobs": {"content": [{"token": "See", "logprob": -0.5, "bytes": [83, 101, 101],
          "top_logprobs": [{"token": "See", "logprob": -0.5, "bytes": null}]}],
          "refusal": null}}],
      "usage": {"prompt_tokens": 5, "completion_tokens": 9}}"""
    events = StreamParser("openai").complete_answer(body)
    assert events[:3] == [
        TextDelta("See [docs](https://x.invalid)."),
        LogprobsDelta((TokenLogprob("See", -0.5, (83, 101, 101), (TopLogprob("See", -0.5),)),)),
        FinishEvent(Finish.STOP, "stop"),
    ]
    metadata = events[-1]
    assert isinstance(metadata, ProviderMetadata)
    assert metadata.data["service_tier"] == "default"
    assert metadata.data["system_fingerprint"] == "fp_1"
    assert metadata.data["annotations"][0]["url_citation"]["url"] == "https://x.invalid"
