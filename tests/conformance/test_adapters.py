"""One conformance suite for every provider adapter.

Each adapter runs against a local fake of its provider (``tests/fakes/<provider>_server.py``)
that renders the same provider-neutral :class:`Script` in the provider's real wire format; each
fake is itself checked by the provider's official SDK
(``tests/integration/test_fakes_official_sdks.py``).
So every case here asks all adapters the same question and expects the same canonical answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import grpc
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    PromptUsage,
    ProviderMetadata,
    ReasoningDelta,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from switchboard_router.providers.anthropic_messages import AnthropicMessagesAdapter
from switchboard_router.providers.base import (
    Adapter,
    Target,
    UpstreamContextLengthExceeded,
    UpstreamCredentialRejected,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from switchboard_router.providers.gemini import GeminiAdapter
from switchboard_router.providers.http import create_session
from switchboard_router.providers.openai_chat import OpenAIChatAdapter
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, ScriptUsage

Serve = Callable[[Script], AbstractAsyncContextManager[FakeProvider]]


async def openai_sdk_text(fake: FakeProvider) -> str:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="test")
    async with client:
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    return reply.choices[0].message.content or ""


async def anthropic_sdk_text(fake: FakeProvider) -> str:
    client = anthropic.AsyncAnthropic(base_url=fake.base_url.removesuffix("/v1"), api_key="test")
    async with client:
        reply = await client.messages.create(
            model="m", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    return "".join(b.text for b in reply.content if b.type == "text")


async def gemini_sdk_text(fake: FakeProvider) -> str:
    client = genai.Client(
        api_key="test",
        http_options=genai_types.HttpOptions(
            base_url=fake.base_url.removesuffix("/v1beta"), api_version="v1beta"
        ),
    )
    reply = await client.aio.models.generate_content(model="m", contents="hi")
    return reply.text or ""


def openai_turns(body: Any) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


def anthropic_turns(body: Any) -> list[tuple[str, str]]:
    turns = [
        ("system", body["system"] if isinstance(body["system"], str) else body["system"][0]["text"])
    ]
    for m in body["messages"]:
        content = m["content"]
        text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
        turns.append((m["role"], text))
    return turns


def gemini_turns(body: Any) -> list[tuple[str, str]]:
    turns = [("system", "".join(p["text"] for p in body["systemInstruction"]["parts"]))]
    names = {"user": "user", "model": "assistant"}
    for c in body["contents"]:
        turns.append((names[c["role"]], "".join(p.get("text", "") for p in c["parts"])))
    return turns


def openai_json_mode(body: Any) -> bool:
    return bool(body.get("response_format", {}).get("type") == "json_object")


def gemini_json_mode(body: Any) -> bool:
    return bool(body["generationConfig"].get("responseMimeType") == "application/json")


@dataclass(frozen=True)
class Provider:
    name: str
    serve: Serve
    adapter: Callable[[aiohttp.ClientSession], Adapter]
    sdk_text: Callable[[FakeProvider], Awaitable[str]]
    turns: Callable[[Any], list[tuple[str, str]]]
    json_mode: Callable[[Any], bool] | None  # None: the provider has no JSON mode
    # Which usage details the provider's format can carry.
    reports_cache_write: bool
    reports_reasoning: bool
    # Whether the prompt's counts come before the end (so a cut stream bills the real prompt).
    reports_prompt_early: bool


PROVIDERS = [
    Provider(
        "openai",
        openai_server.serve,
        OpenAIChatAdapter,
        openai_sdk_text,
        openai_turns,
        openai_json_mode,
        reports_cache_write=True,
        reports_reasoning=True,
        reports_prompt_early=False,  # usage only in the last chunk
    ),
    Provider(
        "anthropic",
        anthropic_server.serve,
        AnthropicMessagesAdapter,
        anthropic_sdk_text,
        anthropic_turns,
        None,
        reports_cache_write=True,
        reports_reasoning=False,
        reports_prompt_early=True,  # message_start
    ),
    Provider(
        "google",
        gemini_server.serve,
        GeminiAdapter,
        gemini_sdk_text,
        gemini_turns,
        gemini_json_mode,
        reports_cache_write=False,
        reports_reasoning=True,
        reports_prompt_early=True,  # the running usageMetadata, when chunks carry it
    ),
]


@pytest.fixture(params=PROVIDERS, ids=[p.name for p in PROVIDERS])
def provider(request: pytest.FixtureRequest) -> Provider:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as http:  # a local server
        yield http


HELLO = CompletionRequest(model="x/y", messages=(Message.of(Role.USER, "hi"),), max_tokens=64)


@dataclass
class Outcome:
    events: list[AdapterEvent]
    error: UpstreamError | None

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def usage(self) -> list[UsageReport]:
        """The final usage reports (running counts, marked estimated, are left out)."""
        return [e for e in self.events if isinstance(e, UsageReport) and not e.estimated]

    @property
    def finish(self) -> list[FinishEvent]:
        return [e for e in self.events if isinstance(e, FinishEvent)]

    def tool_calls(self) -> list[ToolCall]:
        calls: dict[int, list[str]] = {}
        for e in self.events:
            if isinstance(e, ToolCallDelta):
                call = calls.setdefault(e.index, ["", "", ""])
                call[0] = call[0] or e.id
                call[1] = call[1] or e.name
                call[2] += e.arguments
        return [ToolCall(*calls[i]) for i in sorted(calls)]


async def run(
    provider: Provider,
    session: aiohttp.ClientSession,
    fake: FakeProvider,
    request: CompletionRequest = HELLO,
    timeout: float = 10.0,
) -> Outcome:
    target = Target(
        provider.name, fake.base_url, "model-1", Secret("sk-test"), dialect=provider.name
    )
    events: list[AdapterEvent] = []
    try:
        async for event in provider.adapter(session).stream(request, target, timeout=timeout):
            events.append(event)
    except UpstreamError as error:
        return Outcome(events, error)
    return Outcome(events, None)


def expected_usage(provider: Provider, usage: ScriptUsage) -> UsageReport:
    return UsageReport(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens if provider.reports_cache_write else 0,
        reasoning_tokens=usage.reasoning_tokens if provider.reports_reasoning else 0,
    )


async def test_plain_text_with_usage_on_the_final_events(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    usage = ScriptUsage(120, 30, cached_tokens=64, cache_write_tokens=16, reasoning_tokens=8)
    script = Script(text=("The ", "quick ", "brown ", "fox."), usage=usage)
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake)
    assert outcome.error is None
    assert outcome.text == "The quick brown fox."
    assert outcome.usage == [expected_usage(provider, usage)]
    assert [f.reason for f in outcome.finish] == [Finish.STOP]
    # Usage and finish come after every piece of text.
    last_text = max(i for i, e in enumerate(outcome.events) if isinstance(e, TextDelta))
    assert all(
        not isinstance(e, TextDelta | ToolCallDelta) for e in outcome.events[last_text + 1 :]
    )
    after = [e for e in outcome.events[last_text + 1 :] if not isinstance(e, ProviderMetadata)]
    assert [type(e) for e in after] in ([UsageReport, FinishEvent], [FinishEvent, UsageReport])


async def test_streamed_text_equals_the_official_sdks_non_streamed_answer(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    script = Script(text=("Über ", "naïve ", "", "café — 東京 🚀"))
    async with provider.serve(script) as fake:
        streamed = await run(provider, session, fake)
        whole = await provider.sdk_text(fake)
    assert streamed.text == whole == script.full_text


async def test_multi_turn_history_reaches_the_provider_in_order(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    request = dataclasses.replace(
        HELLO,
        messages=(
            Message.of(Role.SYSTEM, "You are terse."),
            Message.of(Role.USER, "Name a colour."),
            Message.of(Role.ASSISTANT, "Blue."),
            Message.of(Role.USER, "Another."),
        ),
    )
    async with provider.serve(Script()) as fake:
        outcome = await run(provider, session, fake, request)
    assert outcome.error is None
    assert provider.turns(fake.requests[0].body) == [
        ("system", "You are terse."),
        ("user", "Name a colour."),
        ("assistant", "Blue."),
        ("user", "Another."),
    ]


async def test_tool_calls_split_across_chunks_are_assembled(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    calls = (
        ScriptToolCall("call_a", "get_weather", ('{"ci', 'ty": "Os', 'lo"}')),
        ScriptToolCall("call_b", "get_time", ('{"tz": ', '"CET"}')),
    )
    script = Script(text=("Checking.",), tool_calls=calls, finish="tool_calls")
    request = dataclasses.replace(
        HELLO,
        tools=(
            Tool(
                "get_weather",
                "Weather",
                {"type": "object", "properties": {"city": {"type": "string"}}},
            ),
            Tool("get_time", "Time", {"type": "object", "properties": {"tz": {"type": "string"}}}),
        ),
    )
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake, request)
    assert outcome.error is None
    assert outcome.text == "Checking."
    got = outcome.tool_calls()
    assert [(c.name, json.loads(c.arguments)) for c in got] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"tz": "CET"}),
    ]
    assert all(c.id for c in got) and len({c.id for c in got}) == 2
    assert [f.reason for f in outcome.finish] == [Finish.TOOL_CALLS]


async def test_json_output(provider: Provider, session: aiohttp.ClientSession) -> None:
    adapter = provider.adapter(session)
    if provider.json_mode is None:
        assert "response_format" not in adapter.parameters(provider.name)
        return  # the relay unsets it for this provider and reports it as ignored
    script = Script(text=('{"answer"', ": 42", "}"))
    request = dataclasses.replace(
        HELLO, response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    )
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake, request)
    assert provider.json_mode(fake.requests[0].body)
    assert json.loads(outcome.text) == {"answer": 42}


async def test_odd_but_legal_streams(provider: Provider, session: aiohttp.ClientSession) -> None:
    usage = ScriptUsage(7, 5)
    script = Script(text=("a", "", "b", "c", "", "d"), usage=usage, odd=True)
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake)
    assert outcome.error is None
    assert outcome.text == "abcd"
    assert outcome.usage == [expected_usage(provider, usage)]
    assert not any(isinstance(e, TextDelta) and not e.text for e in outcome.events)


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (429, UpstreamRateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
        (503, UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
        (401, UpstreamCredentialRejected, grpc.StatusCode.UNAVAILABLE),
        (404, UpstreamError, grpc.StatusCode.NOT_FOUND),
        (400, UpstreamError, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_http_errors_map_to_grpc_codes(
    provider: Provider,
    session: aiohttp.ClientSession,
    status: int,
    error_type: type[UpstreamError],
    code: grpc.StatusCode,
) -> None:
    script = Script(status=status, retry_after="7" if status == 429 else None)
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake)
    assert isinstance(outcome.error, error_type)
    assert outcome.error.code == code
    assert outcome.error.status == status
    assert outcome.events == []
    if status == 429:
        assert outcome.error.retry_after_seconds == 7.0


async def test_context_length_is_recognised(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    async with provider.serve(Script(status=400, error_kind="context_length")) as fake:
        outcome = await run(provider, session, fake)
    assert isinstance(outcome.error, UpstreamContextLengthExceeded)
    assert outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_timeout(provider: Provider, session: aiohttp.ClientSession) -> None:
    async with provider.serve(Script(headers_delay=2.0)) as fake:
        outcome = await run(provider, session, fake, timeout=0.3)
    assert isinstance(outcome.error, UpstreamTimeout)
    assert outcome.error.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_mid_stream_error_after_some_text(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    script = Script(text=("one ", "two ", "three ", "four"), fail_after=2)
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake)
    assert outcome.text == "one two "
    assert isinstance(outcome.error, UpstreamError)
    assert outcome.error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert outcome.finish == []


async def test_a_stream_cut_midway_is_an_error(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    script = Script(text=("one ", "two ", "three ", "four"), cut_after=2)
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake)
    assert outcome.text == "one two "
    assert isinstance(outcome.error, UpstreamUnavailable)


async def test_no_usage_reported_means_no_usage_event(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    if provider.name == "anthropic":
        pytest.skip("Anthropic always reports usage (message_start and message_delta)")
    async with provider.serve(Script(usage=None)) as fake:
        outcome = await run(provider, session, fake)
    assert outcome.error is None
    assert outcome.usage == []  # the relay estimates and marks the ledger entry estimated
    assert outcome.text == Script().full_text


async def test_client_cancellation_closes_the_upstream_promptly(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    script = Script(text=tuple(f"w{i} " for i in range(200)), chunk_delay=0.02)
    async with provider.serve(script) as fake:
        target = Target(provider.name, fake.base_url, "m", Secret("k"), dialect=provider.name)
        events = provider.adapter(session).stream(HELLO, target, timeout=10)
        first = await anext(events)
        while isinstance(first, PromptUsage):  # Anthropic's message_start comes first
            first = await anext(events)
        assert isinstance(first, TextDelta)
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        await events.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(fake.disconnected.wait(), 2.0)
        assert fake.disconnected_at - closed_at < 0.5
        assert len(fake.requests) == 1


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_openai_compatible_reasoning_is_relayed_apart_from_the_text(
    field: str, session: aiohttp.ClientSession
) -> None:
    openai = PROVIDERS[0]
    script = Script(
        reasoning=("The user ", "wants a ", "greeting."), reasoning_field=field, text=("Hi", "!")
    )
    async with openai.serve(script) as fake:
        outcome = await run(openai, session, fake)
    assert outcome.error is None
    assert outcome.text == "Hi!"
    reasoning = [e for e in outcome.events if isinstance(e, ReasoningDelta)]
    assert "".join(e.text for e in reasoning) == "The user wants a greeting."
    first_text = min(i for i, e in enumerate(outcome.events) if isinstance(e, TextDelta))
    assert all(isinstance(e, ReasoningDelta) for e in outcome.events[:first_text])


async def test_a_cut_stream_still_knows_its_exact_prompt_where_the_provider_said_it(
    provider: Provider, session: aiohttp.ClientSession
) -> None:
    usage = ScriptUsage(2000, 40, cached_tokens=1500, cache_write_tokens=300)
    # odd: Gemini's chunks then carry the running usageMetadata, as real streams do.
    script = Script(text=("a", "b", "c", "d"), usage=usage, cut_after=2, odd=True)
    async with provider.serve(script) as fake:
        outcome = await run(provider, session, fake)
    assert outcome.error is not None  # cut midway
    early = [e for e in outcome.events if isinstance(e, PromptUsage)]
    if not provider.reports_prompt_early:
        assert early == []
        return
    write = usage.cache_write_tokens if provider.reports_cache_write else 0
    assert early == [PromptUsage(2000, cached_tokens=1500, cache_write_tokens=write)]
