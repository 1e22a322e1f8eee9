"""What the relay does with the events every adapter may yield, whatever the provider.

- An adapter that fails in a way nobody foresaw (a provider sent a field of a shape the adapter
  does not expect) is the provider's fault, said clearly: before the first token the relay
  falls back to the next endpoint, after it the client's stream ends ``UNAVAILABLE`` naming the
  provider, and the cut generation is metered.
- Finish reasons are normalised (a tool call then ``stop`` is ``TOOL_CALLS``).
- Signed reasoning is assembled into whole blocks for the next turn; ``reasoning.exclude``
  hides the text but keeps the blocks; provider metadata is merged and bounded; each choice of
  ``n`` > 1 ends on its own.

A real relay, usage sink and Redis; the adapters are stand-ins that yield (or crash) on cue."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
import redis.asyncio as redis

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore
from switchboard_core.pricing import PriceSheet
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    ANTHROPIC_REASONING,
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    ProviderMetadata,
    ReasoningBlock,
    ReasoningConfig,
    ReasoningDelta,
    Role,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.providers.base import Target, UpstreamProtocolError
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.relay import Completed, Relay, RelayEvent, Started
from switchboard_router.usage_sink import UsageSink

REQUEST = CompletionRequest(model="x/y", messages=(Message.of(Role.USER, "hi"),), max_tokens=64)
FORMAT = catalog_pb2.API_FORMAT_OPENAI_CHAT


class ScriptedAdapter:
    """Yields ``events``, then raises ``crash`` if given (as a buggy adapter would)."""

    def __init__(self, events: list[AdapterEvent], crash: Exception | None = None) -> None:
        self.events = events
        self.crash = crash

    def parameters(self, dialect: str) -> frozenset[str]:
        return frozenset({"max_tokens"})

    def requires_credential(self, dialect: str) -> bool:
        return False

    async def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        for event in self.events:
            yield event
        if self.crash is not None:
            raise self.crash


class ByProvider:
    """An adapter that picks a scripted adapter by the target's provider."""

    def __init__(self, adapters: dict[str, ScriptedAdapter]) -> None:
        self.adapters = adapters

    def parameters(self, dialect: str) -> frozenset[str]:
        return frozenset({"max_tokens"})

    def requires_credential(self, dialect: str) -> bool:
        return False

    def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        return self.adapters[target.provider_id].stream(request, target, timeout=timeout)


def route(provider_id: str) -> Route:
    return Route(
        endpoint_id=f"{provider_id}:x/y",
        model_id="x/y",
        provider_id=provider_id,
        api_format=FORMAT,
        base_url="http://127.0.0.1:9/v1",
        dialect="vllm",
        upstream_model="m",
        price=PriceSheet.flat("1", "2"),
        context_length=8192,
        max_completion_tokens=1024,
        supported_parameters=frozenset(),
    )


@pytest.fixture
async def stream_name(redis_prefix: str) -> str:
    return f"{redis_prefix}usage-faults-{uuid.uuid4().hex}"


def relay(adapters: dict[str, ScriptedAdapter], client: redis.Redis, stream: str) -> Relay:
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never reached: the outbox answers
    admission = Admission(BudgetStore(client, stream + ":budget:"), 4096, 60)
    return Relay(
        {FORMAT: ByProvider(adapters)},
        ProviderCredentials({}),
        UsageSink(client, stream, channel),
        admission,
    )


async def published(client: redis.Redis, stream: str) -> list[metering_pb2.UsageEvent]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
    return [metering_pb2.UsageEvent.FromString(fields[EVENT_FIELD]) for _, fields in entries]


GOOD = ScriptedAdapter([TextDelta("fine"), UsageReport(3, 1), FinishEvent(Finish.STOP, "stop")])


async def test_a_crash_before_the_first_token_falls_back_to_the_next_endpoint(
    redis_client: redis.Redis, stream_name: str
) -> None:
    adapters = {
        "buggy": ScriptedAdapter([], TypeError("list has no attribute 'get'")),
        "good": GOOD,
    }
    events: list[RelayEvent] = [
        e
        async for e in relay(adapters, redis_client, stream_name).run(
            REQUEST,
            [route("buggy"), route("good")],
            Caller("key-1", "account-1"),
            timeout=5,
            streamed=True,
        )
    ]
    assert isinstance(events[0], Started) and events[0].route.provider_id == "good"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["fine"]
    assert isinstance(events[-1], Completed)


async def test_a_crash_after_the_first_token_ends_the_stream_naming_the_provider_and_is_metered(
    redis_client: redis.Redis, stream_name: str
) -> None:
    adapters = {"buggy": ScriptedAdapter([TextDelta("partial answer")], KeyError("choices"))}
    events: list[RelayEvent] = []
    with pytest.raises(UpstreamProtocolError) as raised:
        async for event in relay(adapters, redis_client, stream_name).run(
            REQUEST,
            [route("buggy"), route("good")],
            Caller("key-1", "account-1"),
            timeout=5,
            streamed=True,
        ):
            events.append(event)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.reason == "UPSTREAM_PROTOCOL_ERROR"
    assert "buggy" in str(raised.value) and "KeyError" in str(raised.value)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["partial answer"]
    for _ in range(50):  # the cut generation's event is written in the background
        rows = await published(redis_client, stream_name)
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [r.status for r in rows] == [metering_pb2.GENERATION_STATUS_FAILED]
    assert rows[0].usage.estimated and rows[0].usage.completion_tokens > 0


async def test_a_stop_after_a_tool_call_is_reported_as_tool_calls_with_the_native_reason(
    redis_client: redis.Redis, stream_name: str
) -> None:
    adapters = {
        "good": ScriptedAdapter(
            [ToolCallDelta(0, "call_1", "lookup", "{}"), FinishEvent(Finish.STOP, "stop")]
        )
    }
    events = [
        e
        async for e in relay(adapters, redis_client, stream_name).run(
            REQUEST, [route("good")], Caller("key-1", "account-1"), timeout=5, streamed=True
        )
    ]
    end = events[-1]
    assert isinstance(end, Completed)
    assert (end.finish.reason, end.finish.native_reason) == (Finish.TOOL_CALLS, "stop")


async def events_of(
    adapter: ScriptedAdapter,
    client: redis.Redis,
    stream: str,
    request: CompletionRequest = REQUEST,
) -> list[RelayEvent]:
    return [
        e
        async for e in relay({"good": adapter}, client, stream).run(
            request, [route("good")], Caller("key-1", "account-1"), timeout=5, streamed=True
        )
    ]


THINKING: list[AdapterEvent] = [
    ReasoningDelta("Let me ", format=ANTHROPIC_REASONING, block=0),
    ReasoningDelta("check.", format=ANTHROPIC_REASONING, block=0),
    ReasoningDelta("", format=ANTHROPIC_REASONING, block=0, signature="c2lnbmVk"),
    ReasoningDelta("", format=ANTHROPIC_REASONING, block=1, redacted="ZW5jcnlwdGVk"),
    TextDelta("It is 42."),
    UsageReport(10, 30, reasoning_tokens=20),
    FinishEvent(Finish.STOP, "end_turn"),
]


@pytest.mark.parametrize("exclude", [False, True])
async def test_signed_reasoning_becomes_whole_blocks_and_exclude_hides_only_the_text(
    exclude: bool, redis_client: redis.Redis, stream_name: str
) -> None:
    request = dataclasses.replace(REQUEST, reasoning=ReasoningConfig(exclude=exclude))
    events = await events_of(ScriptedAdapter(THINKING), redis_client, stream_name, request)
    relayed = [e for e in events if isinstance(e, ReasoningDelta)]
    assert [e.text for e in relayed if e.text] == ([] if exclude else ["Let me ", "check."])
    # The seals (a signature, a redacted block) pass in place, text or not, for the shapes
    # that stream them (the HTTP edge's Anthropic messages); the gRPC stream skips them.
    seals = [(e.block, e.signature, e.redacted) for e in relayed if not e.text]
    assert seals == [(0, "c2lnbmVk", ""), (1, "", "ZW5jcnlwdGVk")]
    end = events[-1]
    assert isinstance(end, Completed)
    assert end.reasoning == {
        0: (
            ReasoningBlock(ANTHROPIC_REASONING, "Let me check.", "c2lnbmVk"),
            ReasoningBlock(ANTHROPIC_REASONING, redacted="ZW5jcnlwdGVk"),
        )
    }


async def test_provider_metadata_is_merged_and_bounded(
    redis_client: redis.Redis, stream_name: str
) -> None:
    small = ScriptedAdapter(
        [
            TextDelta("a"),
            ProviderMetadata({"safety_ratings": [{"category": "HARM", "probability": "LOW"}]}),
            ProviderMetadata({"finish_message": "done", "safety_ratings": []}),
            FinishEvent(Finish.STOP, "STOP"),
        ]
    )
    end = (await events_of(small, redis_client, stream_name))[-1]
    assert isinstance(end, Completed)
    assert end.metadata == {"safety_ratings": [], "finish_message": "done"}
    huge = ScriptedAdapter(
        [TextDelta("a"), ProviderMetadata({"citations": ["x" * 70_000]}), FinishEvent(Finish.STOP)]
    )
    end = (await events_of(huge, redis_client, stream_name))[-1]
    assert isinstance(end, Completed)
    assert end.metadata == {"truncated": True}


async def test_each_choice_ends_on_its_own_when_n_is_above_one(
    redis_client: redis.Redis, stream_name: str
) -> None:
    adapter = ScriptedAdapter(
        [
            TextDelta("A", choice=0),
            TextDelta("B", choice=1),
            ToolCallDelta(0, "c", "f", "{}", choice=1),
            FinishEvent(Finish.LENGTH, "length", choice=0),
            FinishEvent(Finish.STOP, "stop", choice=1),
        ]
    )
    request = dataclasses.replace(REQUEST, n=2)
    end = (await events_of(adapter, redis_client, stream_name, request))[-1]
    assert isinstance(end, Completed)
    assert end.finish == FinishEvent(Finish.LENGTH, "length")
    assert end.choices == {
        0: FinishEvent(Finish.LENGTH, "length"),
        1: FinishEvent(Finish.TOOL_CALLS, "stop", choice=1),
    }
