"""A gpt-4o stream cut short is billed its output and prompt as gpt-4o's tokenizer counts them,
through the real relay, usage sink and Redis; a stream that ends with the provider's usage
never touches the tokenizer.

The text is the recorded gpt-4o answer of ``openai/openai_text_usage`` (OpenAI billed 47
completion tokens, and 14 for the prompt "What's the weather like in SF?"); four characters a
token would bill 64 and 12."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis.asyncio as redis

from switchboard.metering.v1 import metering_pb2
from switchboard_router import usage_estimate
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    Role,
    TextDelta,
    UsageReport,
)
from switchboard_router.relay import Relay
from switchboard_router.token_count import count_tokens
from tests.integration.test_relay_adapter_events import ScriptedAdapter, published, relay, route

RECORDED = Path(__file__).parents[1] / "conformance" / "recorded" / "openai"
ANSWER: str = json.loads((RECORDED / "openai_text_usage.json").read_text())["expect"]["text"]
PROMPT = "What's the weather like in SF?"
REQUEST = CompletionRequest(
    model="openai/gpt-4o", messages=(Message.of(Role.USER, PROMPT),), max_tokens=64
)
GPT_4O = dataclasses.replace(route("openai"), upstream_model="gpt-4o-2024-08-06")
WORDS = [ANSWER[i : i + 5] for i in range(0, len(ANSWER), 5)]
EVENTS: list[AdapterEvent] = [
    *(TextDelta(word) for word in WORDS),
    UsageReport(14, 47),  # what OpenAI billed, after the last chunk: a cut never sees it
    FinishEvent(Finish.STOP, "stop"),
]


@pytest.fixture
async def stream_name(redis_prefix: str) -> str:
    return f"{redis_prefix}cut-tokens-{uuid.uuid4().hex}"


async def rows_of(client: redis.Redis, stream: str) -> list[metering_pb2.UsageEvent]:
    for _ in range(100):  # a cut generation's event is written in the background
        rows = await published(client, stream)
        if rows:
            return rows
        await asyncio.sleep(0.05)
    return []


async def run(the_relay: Relay, cut: bool) -> None:
    stream = the_relay.run(
        REQUEST, [GPT_4O], Caller("key-1", "account-1"), timeout=5, streamed=True
    )
    seen = ""
    async for event in stream:
        if isinstance(event, TextDelta):
            seen += event.text
            if cut and seen == ANSWER:
                break  # the client goes away before the usage chunk
    await stream.aclose()


async def test_a_cut_gpt_4o_stream_is_billed_what_its_tokenizer_counts(
    redis_client: redis.Redis, stream_name: str
) -> None:
    # The worker started and o200k_base read (the cold start has its own test, with its time).
    assert await count_tokens("gpt-4o", [("warm",)], timeout=60) == [1]
    the_relay = relay({"openai": ScriptedAdapter(EVENTS)}, redis_client, stream_name)
    await run(the_relay, cut=True)
    (row,) = await rows_of(redis_client, stream_name)
    await the_relay.drain()
    assert row.status == metering_pb2.GENERATION_STATUS_CANCELLED
    assert row.usage.estimated
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (14, 47)


async def test_a_stream_that_ends_with_its_usage_never_counts_tokens(
    redis_client: redis.Redis, stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def spy(model: str, parts: Sequence[Sequence[str]], timeout: float) -> None:
        calls.append(model)

    monkeypatch.setattr(usage_estimate, "count_tokens", spy)
    the_relay = relay({"openai": ScriptedAdapter(EVENTS)}, redis_client, stream_name)
    await run(the_relay, cut=False)
    (row,) = await rows_of(redis_client, stream_name)
    await the_relay.drain()
    assert row.status == metering_pb2.GENERATION_STATUS_COMPLETED
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (14, 47)
    assert not row.usage.estimated
    assert calls == []


async def test_without_a_tokenizer_the_cut_stream_counts_characters(
    redis_client: redis.Redis, stream_name: str
) -> None:
    unknown = dataclasses.replace(GPT_4O, upstream_model="some-model", model_id="x/y")
    the_relay = relay({"openai": ScriptedAdapter(EVENTS)}, redis_client, stream_name)
    stream = the_relay.run(
        REQUEST, [unknown], Caller("key-1", "account-1"), timeout=5, streamed=True
    )
    seen = ""
    async for event in stream:
        if isinstance(event, TextDelta):
            seen += event.text
            if seen == ANSWER:
                break
    await stream.aclose()
    (row,) = await rows_of(redis_client, stream_name)
    await the_relay.drain()
    chars = (len(PROMPT) + usage_estimate.MESSAGE_FRAMING_CHARS + 3) // 4
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (chars, 64)
