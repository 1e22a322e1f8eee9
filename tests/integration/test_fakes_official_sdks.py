"""The fakes speak the real wire formats: each provider's official SDK reads them.

Streams with text, tool calls split into pieces and usage, the odd-but-legal variants, and
errors (which each SDK must turn into its own typed exception) for ``openai``, ``anthropic``
and ``google-genai``. If a fake drifted from its provider's format, these would fail.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.faults import Faults
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, ScriptUsage, signature_for

USAGE = ScriptUsage(300, 40, cached_tokens=200, cache_write_tokens=50, reasoning_tokens=10)
TOOLS = (
    ScriptToolCall("call_w", "get_weather", ('{"city"', ': "Oslo', '"}')),
    ScriptToolCall("call_t", "get_time", ("{}",)),
)
SCRIPTS = {
    "text": Script(text=("Hello", ", ", "world"), usage=USAGE),
    "odd": Script(text=("a", "", "b", "c"), usage=USAGE, odd=True),
    "tools": Script(text=("Checking.",), tool_calls=TOOLS, finish="tool_calls", usage=USAGE),
    "length": Script(text=("cut",), finish="length", usage=USAGE),
}


def openai_client(fake: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0)


def anthropic_client(fake: FakeProvider) -> anthropic.AsyncAnthropic:
    root = fake.base_url.removesuffix("/v1")
    return anthropic.AsyncAnthropic(base_url=root, api_key="test", max_retries=0)


def gemini_client(fake: FakeProvider) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=fake.base_url.removesuffix("/v1beta"), api_version="v1beta"
    )
    return genai.Client(api_key="test", http_options=options)


@pytest.mark.parametrize("name", SCRIPTS)
async def test_openai_sdk_reads_the_fake_stream(name: str) -> None:
    script = SCRIPTS[name]
    if name == "length":  # the SDK's stream helper refuses a truncated answer by design
        script = dataclasses.replace(script, finish="stop")
    async with (
        openai_server.serve(script) as fake,
        openai_client(fake) as client,
        client.chat.completions.stream(
            model="gpt-x",
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True},
        ) as stream,
    ):
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert (message.content or "") == script.full_text
    calls = message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (t.id, t.name, t.arguments_json) for t in script.tool_calls
    ]
    assert final.choices[0].finish_reason == script.finish
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (300, 40)
    assert final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 200
    assert final.usage.prompt_tokens_details.cache_write_tokens == 50
    assert final.usage.completion_tokens_details is not None
    assert final.usage.completion_tokens_details.reasoning_tokens == 10


@pytest.mark.parametrize("name", SCRIPTS)
async def test_anthropic_sdk_reads_the_fake_stream(name: str) -> None:
    script = SCRIPTS[name]
    async with (
        anthropic_server.serve(script) as fake,
        anthropic_client(fake) as client,
        client.messages.stream(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_message()
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text == script.full_text
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        (t.id, t.name, json.loads(t.arguments_json)) for t in script.tool_calls
    ]
    native = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
    assert final.stop_reason == native[script.finish]
    usage = final.usage
    assert usage.input_tokens == 300 - 200 - 50  # Anthropic counts cache reads/writes apart
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (200, 50)
    assert usage.output_tokens == 40


@pytest.mark.parametrize("name", SCRIPTS)
async def test_gemini_sdk_reads_the_fake_stream(name: str) -> None:
    script = SCRIPTS[name]
    async with gemini_server.serve(script) as fake:
        client = gemini_client(fake)
        chunks = [
            c
            async for c in await client.aio.models.generate_content_stream(
                model="gemini-x", contents="hi"
            )
        ]
    text = "".join(
        p.text or ""
        for c in chunks
        for p in (c.candidates[0].content.parts or [])  # type: ignore[index, union-attr]
    )
    assert text == script.full_text
    calls = [fc for c in chunks for fc in (c.function_calls or [])]
    assert [(fc.name, fc.args) for fc in calls] == [
        (t.name, json.loads(t.arguments_json)) for t in script.tool_calls
    ]
    last = chunks[-1]
    native = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == native[script.finish]
    meta = last.usage_metadata
    assert meta is not None
    assert (meta.prompt_token_count, meta.cached_content_token_count) == (300, 200)
    assert (meta.candidates_token_count, meta.thoughts_token_count) == (30, 10)


async def test_openai_sdk_raises_its_typed_errors() -> None:
    async with (
        openai_server.serve(Script(status=429, retry_after="3")) as fake,
        openai_client(fake) as client,
    ):
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="m", messages=[])
        assert limited.value.response.headers["retry-after"] == "3"
        fake.script = Script(status=400, error_kind="context_length")
        with pytest.raises(openai.BadRequestError) as long:
            await client.chat.completions.create(model="m", messages=[])
        assert long.value.code == "context_length_exceeded"
        fake.script = Script(status=500)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=[])
        fake.script = Script(fail_after=1)
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


async def test_anthropic_sdk_raises_its_typed_errors() -> None:
    async with (
        anthropic_server.serve(Script(status=529)) as fake,
        anthropic_client(fake) as client,
    ):
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            await client.messages.create(model="m", max_tokens=5, messages=[])
        assert overloaded.value.status_code == 529
        assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        fake.script = Script(status=429, retry_after="9")
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model="m", max_tokens=5, messages=[])
        fake.script = Script(fail_after=1)
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                await stream.get_final_message()


async def test_anthropic_sdk_reads_signed_thinking_and_its_unsigned_tool_turn_is_refused() -> None:
    from anthropic.types import MessageParam, ThinkingConfigEnabledParam, ToolResultBlockParam

    script = Script(
        reasoning=("Check ", "the weather."),
        signed_reasoning=True,
        redacted_reasoning=("EmwKAhgBEgy3va3pzix",),
        text=("Checking.",),
        tool_calls=TOOLS[:1],
        finish="tool_calls",
        usage=USAGE,
    )
    thinking: ThinkingConfigEnabledParam = {"type": "enabled", "budget_tokens": 1024}
    question: MessageParam = {"role": "user", "content": "Weather in Oslo?"}
    async with anthropic_server.serve(script) as fake, anthropic_client(fake) as client:
        async with client.messages.stream(
            model="claude-x", max_tokens=2048, thinking=thinking, messages=[question]
        ) as stream:
            final = await stream.get_final_message()
        assert [b.type for b in final.content] == [
            "redacted_thinking",
            "thinking",
            "text",
            "tool_use",
        ]
        signed = final.content[1]
        assert signed.type == "thinking"
        assert signed.thinking == "Check the weather."
        assert signed.signature == signature_for("Check the weather.")
        result: ToolResultBlockParam = {
            "type": "tool_result",
            "tool_use_id": "call_w",
            "content": "4°C",
        }
        answered: MessageParam = {"role": "user", "content": [result]}
        turn: MessageParam = {"role": "assistant", "content": final.content}
        fake.script = dataclasses.replace(script, tool_calls=(), finish="stop")
        accepted = await client.messages.create(
            model="claude-x",
            max_tokens=2048,
            thinking=thinking,
            messages=[question, turn, answered],
        )
        assert accepted.stop_reason == "end_turn"
        unsigned = [b for b in final.content if b.type in ("text", "tool_use")]
        turn = {"role": "assistant", "content": unsigned}
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(
                model="claude-x",
                max_tokens=2048,
                thinking=thinking,
                messages=[question, turn, answered],
            )
        assert "Expected `thinking` or `redacted_thinking`" in str(refused.value)


async def test_gemini_sdk_reads_the_fakes_thoughts_and_signature() -> None:
    script = Script(
        text=("Checking.",),
        reasoning=("Weather ", "first."),
        tool_calls=TOOLS[:1],
        finish="tool_calls",
        signed_reasoning=True,
    )
    async with gemini_server.serve(script) as fake:
        client = gemini_client(fake)
        chunks = [
            c
            async for c in await client.aio.models.generate_content_stream(
                model="gemini-x", contents="hi"
            )
        ]
    parts = [p for c in chunks for p in (c.candidates[0].content.parts or [])]  # type: ignore[index, union-attr]
    assert "".join(p.text or "" for p in parts if p.thought) == "Weather first."
    calls = [p for p in parts if p.function_call]
    assert calls[0].thought_signature == base64.b64decode(signature_for("Weather first."))


async def test_gemini_sdk_raises_its_typed_errors() -> None:
    async with gemini_server.serve(Script(status=429)) as fake:
        client = gemini_client(fake)
        with pytest.raises(genai_errors.ClientError) as limited:
            await client.aio.models.generate_content(model="m", contents="hi")
        assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
        fake.script = Script(status=503)
        with pytest.raises(genai_errors.ServerError) as down:
            await client.aio.models.generate_content(model="m", contents="hi")
        assert down.value.code == 503
        fake.script = Script(status=400, error_kind="context_length")
        with pytest.raises(genai_errors.ClientError) as long:
            await client.aio.models.generate_content(model="m", contents="hi")
        assert "input token count" in (long.value.message or "")


async def test_openai_sdk_keeps_the_reasoning_field_of_the_fake_stream() -> None:
    script = Script(reasoning=("Two plus ", "two is four."), text=("4",))
    async with openai_server.serve(script) as fake, openai_client(fake) as client:
        stream = await client.chat.completions.create(
            model="deepseek-reasoner", messages=[{"role": "user", "content": "2+2?"}], stream=True
        )
        reasoning, text = [], []
        async for chunk in stream:
            for choice in chunk.choices:
                extra = choice.delta.model_extra or {}
                reasoning.append(extra.get("reasoning_content") or "")
                text.append(choice.delta.content or "")
        whole = await client.chat.completions.create(
            model="deepseek-reasoner", messages=[{"role": "user", "content": "2+2?"}]
        )
    assert "".join(reasoning) == "Two plus two is four."
    assert "".join(text) == "4"
    message = whole.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == "Two plus two is four."
    assert message.content == "4"


async def test_openai_sdk_reads_the_refusal_of_the_fake_stream_and_answer() -> None:
    script = Script(refusal=("I'm sorry, ", "I can't help with that."))
    async with (
        openai_server.serve(script) as fake,
        openai_client(fake) as client,
        client.chat.completions.stream(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_completion()
        whole = await client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "hi"}]
        )
    for message in (final.choices[0].message, whole.choices[0].message):
        assert message.refusal == "I'm sorry, I can't help with that."
        assert message.content is None
    assert final.choices[0].finish_reason == "stop"


async def test_openai_sdk_reads_injected_faults_as_it_would_a_provider_s() -> None:
    """A 429 burst with Retry-After, then a slow first token with spaced chunks: the SDK
    raises its RateLimitError, then reads the slow stream whole."""
    faults = Faults(
        burst=1, error_status=429, retry_after="2", first_token_delay=0.2, chunk_gap=0.01
    )
    async with (
        openai_server.serve(SCRIPTS["text"], faults=faults) as fake,
        openai_client(fake) as client,
    ):
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="m", messages=[])
        assert limited.value.response.headers["retry-after"] == "2"
        started = time.monotonic()
        async with client.chat.completions.stream(
            model="gpt-x",
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True},
        ) as stream:
            final = await stream.get_final_completion()
        assert time.monotonic() - started >= 0.2
    assert final.choices[0].message.content == SCRIPTS["text"].full_text
    assert final.usage is not None and final.usage.completion_tokens == 40
