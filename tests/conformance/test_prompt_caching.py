"""Prompt caching per format: cache marks (OpenRouter's ``cache_control`` on content parts)
reach the providers that take them, on the right blocks, and the cache writes and reads the
provider reports come back as canonical usage.

Anthropic: the fake keeps Anthropic's prompt cache (``Script.prompt_cache``,
``tests/fakes/anthropic_cache.py``): a block's tokens are its words, so a 2000-word system
prompt is 2000 tokens. OpenAI-compatible hosts: only a dialect that takes ``cache_control``
(OpenRouter) is sent marks; OpenAI caches on its own. Gemini: caching is implicit, nothing is
sent, and the hits come back from ``cachedContentTokenCount``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import pytest

from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.canonical import (
    CACHE_1H,
    CACHE_5M,
    AdapterEvent,
    CompletionRequest,
    Message,
    PromptUsage,
    Role,
    TextPart,
    UsageReport,
)
from switchboard_router.providers.anthropic_messages import AnthropicMessagesAdapter
from switchboard_router.providers.base import Adapter, Target, UpstreamBadRequest
from switchboard_router.providers.gemini import GeminiAdapter
from switchboard_router.providers.guard import guarded
from switchboard_router.providers.http import create_session
from switchboard_router.providers.openai_chat import OpenAIChatAdapter
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.script import FakeProvider, Script, ScriptUsage

RULES = "rule " * 2000  # 2000 tokens at the fake: worth caching for an hour
DOCUMENT = "page " * 1500  # 1500 tokens: cached for five minutes
CACHED = Script(text=("Done.",), usage=ScriptUsage(0, 3), prompt_cache=True)


def conversation(question: str, document: str = DOCUMENT) -> tuple[Message, ...]:
    return (
        Message(Role.SYSTEM, (TextPart(RULES, CACHE_1H),)),
        Message(Role.USER, (TextPart(document, CACHE_5M), TextPart(question))),
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as http:
        yield http


async def run(
    adapter: Adapter, fake: FakeProvider, messages: tuple[Message, ...], dialect: str = ""
) -> list[AdapterEvent]:
    request = CompletionRequest(model="a/b", messages=messages, max_tokens=50)
    target = Target("p", fake.base_url, "model-x", Secret("sk-test"), dialect=dialect)
    stream = adapter.stream(request, target, timeout=10)
    return [event async for event in guarded(stream, "p")]


def usage_of(events: list[AdapterEvent]) -> UsageReport:
    (usage,) = [e for e in events if isinstance(e, UsageReport)]
    return usage


async def test_anthropic_writes_the_marked_prefixes_then_reads_them(
    session: aiohttp.ClientSession,
) -> None:
    adapter = AnthropicMessagesAdapter(session)
    async with anthropic_server.serve(CACHED) as fake:
        first = await run(adapter, fake, conversation("Summarise it."))
        again = await run(adapter, fake, conversation("List the rules."))
        new_document = await run(adapter, fake, conversation("And this?", "line " * 1200))

    sent = fake.requests[0].body
    assert sent["system"] == [
        {"type": "text", "text": RULES, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": DOCUMENT, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Summarise it."},
    ]
    # First: both prefixes written (2000 tokens for an hour, 1500 for five minutes).
    assert usage_of(first) == UsageReport(
        3502, 3, cached_tokens=0, cache_write_tokens=3500, cache_write_1h_tokens=2000
    )
    prompt = next(e for e in first if isinstance(e, PromptUsage))
    assert prompt == PromptUsage(3502, cache_write_tokens=3500, cache_write_1h_tokens=2000)
    # The same prefix again: all of it read from the cache.
    assert usage_of(again) == UsageReport(3503, 3, cached_tokens=3500, cache_write_tokens=0)
    # A new document after the same system prompt: the system prompt is read, the rest written.
    assert usage_of(new_document) == UsageReport(
        3202, 3, cached_tokens=2000, cache_write_tokens=1200
    )


async def test_the_official_sdk_reads_the_fakes_cache_split_by_duration() -> None:
    async with anthropic_server.serve(CACHED) as fake:
        client = anthropic.AsyncAnthropic(
            base_url=fake.base_url.removesuffix("/v1"), api_key="test", max_retries=0
        )
        async with client:

            async def ask() -> anthropic.types.Usage:
                reply = await client.messages.create(
                    model="claude-x",
                    max_tokens=50,
                    system=[
                        {
                            "type": "text",
                            "text": RULES,
                            "cache_control": {"type": "ephemeral", "ttl": "1h"},
                        }
                    ],
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "text",
                                    "text": DOCUMENT,
                                    "cache_control": {"type": "ephemeral"},
                                },
                                {"type": "text", "text": "Summarise it."},
                            ],
                        }
                    ],
                )
                return reply.usage

            first, second = await ask(), await ask()
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_1h_input_tokens == 2000
    assert first.cache_creation.ephemeral_5m_input_tokens == 1500
    assert (first.cache_read_input_tokens, first.input_tokens) == (0, 2)
    assert (second.cache_read_input_tokens, second.cache_creation_input_tokens) == (3500, 0)


async def test_anthropic_caches_nothing_below_its_minimum_and_refuses_what_it_refuses(
    session: aiohttp.ClientSession,
) -> None:
    adapter = AnthropicMessagesAdapter(session)
    short = (Message(Role.USER, (TextPart("a short prompt", CACHE_5M), TextPart("?"))),)
    five = (Message(Role.USER, tuple(TextPart(f"part {i}", CACHE_5M) for i in range(5))),)
    late_hour = (
        Message(Role.SYSTEM, (TextPart(RULES, CACHE_5M),)),
        Message(Role.USER, (TextPart(DOCUMENT, CACHE_1H),)),
    )
    async with anthropic_server.serve(CACHED) as fake:
        assert usage_of(await run(adapter, fake, short)) == UsageReport(4, 3)
        # The router refuses these before they leave (requests.py); Anthropic would too.
        with pytest.raises(UpstreamBadRequest, match="A maximum of 4 blocks with cache_control"):
            await run(adapter, fake, five)
        with pytest.raises(UpstreamBadRequest, match="ttl='1h'"):
            await run(adapter, fake, late_hour)


async def test_openrouter_gets_the_marks_and_reports_cache_usage(
    session: aiohttp.ClientSession,
) -> None:
    usage = ScriptUsage(3502, 3, cached_tokens=3500)
    async with openai_server.serve(Script(usage=usage)) as fake:
        events = await run(OpenAIChatAdapter(session), fake, conversation("Hi"), "openrouter")
    system, user = fake.requests[0].body["messages"]
    assert system["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert user["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in user["content"][1]
    assert usage_of(events).cached_tokens == 3500


async def test_openai_caches_on_its_own_and_is_sent_no_marks(
    session: aiohttp.ClientSession,
) -> None:
    usage = ScriptUsage(3502, 3, cached_tokens=3456)  # OpenAI's hits, in 128-token steps
    async with openai_server.serve(Script(usage=usage)) as fake:
        events = await run(OpenAIChatAdapter(session), fake, conversation("Hi"), "openai")
    sent = fake.requests[0].body
    assert "cache_control" not in str(sent)
    assert [m["content"] for m in sent["messages"]] == [RULES, DOCUMENT + "Hi"]
    assert usage_of(events).cached_tokens == 3456


async def test_gemini_caches_implicitly_and_is_sent_no_marks(
    session: aiohttp.ClientSession,
) -> None:
    usage = ScriptUsage(3502, 3, cached_tokens=3000)  # cachedContentTokenCount
    async with gemini_server.serve(Script(usage=usage)) as fake:
        events = await run(GeminiAdapter(session), fake, conversation("Hi"))
    sent = fake.requests[0].body
    assert "cache_control" not in str(sent) and "cachedContent" not in sent
    assert sent["systemInstruction"] == {"parts": [{"text": RULES}]}
    assert usage_of(events).cached_tokens == 3000
