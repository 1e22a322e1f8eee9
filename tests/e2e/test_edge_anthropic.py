"""The router's Anthropic Messages edge (``POST /v1/messages``), through the official
``anthropic`` Python SDK over TLS with the stack's development CA, against the real processes:
the demo model, and the seeded Anthropic model pointed at a local fake that speaks Anthropic's
wire format (tool calls, signed thinking, failures). Each generation is checked in the ledger.

The SDK's HTTP clients are its own (``anthropic.DefaultAsyncHttpxClient``: it runs on
``httpx2``), given the CA; the sync client runs in a worker thread (the fakes serve from this
test's event loop). Malformed bodies go through plain ``httpx``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.e2e.support import edge_trust, edge_url, ledger_entry, stream_to_fake
from tests.fakes import anthropic_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, ScriptUsage, signature_for

pytestmark = [pytest.mark.e2e]
# Failures are scripted on purpose here: no circuit breaker may open on the fake in between.
STACK_ENV = {
    "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": "1000",
    "SWITCHBOARD_BREAKER_MIN_REQUESTS": "1000",
    "SWITCHBOARD_HTTP_KEEPALIVE_SECONDS": "1",  # pings after 1 s without a first event
}

DEMO = "switchboard/demo"
CLAUDE = "anthropic/claude-haiku-4.5"
HI: list[Any] = [{"role": "user", "content": "hi"}]
WEATHER: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
async def client(
    stack: Stack, api_key: metering_pb2.CreateApiKeyResponse
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    http = anthropic.DefaultAsyncHttpxClient(verify=edge_trust(stack), timeout=30)
    yield anthropic.AsyncAnthropic(
        base_url=edge_url(stack), api_key=api_key.secret, http_client=http, max_retries=0
    )
    await http.aclose()


@pytest.fixture(scope="module")
async def claude(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
) -> AsyncIterator[FakeProvider]:
    """The seeded Anthropic provider, pointed at a fake through the catalog's admin API (and
    reached once, so the router's catalog watch has the change)."""
    async with anthropic_server.serve(Script()) as fake:
        providers = await catalog.ListProviders(catalog_pb2.ListProvidersRequest())
        for provider in providers.providers:
            if provider.id == "anthropic":
                provider.base_url = fake.base_url
                await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
        message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")
        warm = router_pb2.StreamCompletionRequest(model=CLAUDE, messages=[message])
        await stream_to_fake(router, api_key, warm, fake)
        yield fake


async def test_create_answers_a_message_named_by_its_generation_with_its_ledger_tokens(
    client: anthropic.AsyncAnthropic, metering: metering_pb2_grpc.MeteringServiceAsyncStub
) -> None:
    raw = await client.messages.with_raw_response.create(
        model=DEMO,
        max_tokens=12,
        system="You are terse.",
        messages=HI,
        extra_headers={"X-Request-Id": "anthropic-e2e-1"},
    )
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "anthropic-e2e-1"
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == DEMO
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    row = await ledger_entry(metering, message.id)  # the message id is the generation id
    usage = message.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert row.usage.prompt_tokens == usage.input_tokens  # the demo caches nothing
    assert row.usage.completion_tokens == usage.output_tokens
    assert row.model_id == DEMO and not row.streamed


async def test_a_stream_gives_text_deltas_and_a_final_message_with_usage(
    client: anthropic.AsyncAnthropic, metering: metering_pb2_grpc.MeteringServiceAsyncStub
) -> None:
    pieces: list[str] = []
    async with client.messages.stream(model=DEMO, max_tokens=16, messages=HI) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert len(pieces) > 1  # streamed as it came, not at once
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    row = await ledger_entry(metering, final.id)
    assert row.streamed
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


async def test_the_sync_client_works_too(
    stack: Stack, api_key: metering_pb2.CreateApiKeyResponse
) -> None:
    def call() -> anthropic.types.Message:
        with anthropic.DefaultHttpxClient(verify=edge_trust(stack), timeout=30) as http:
            sync = anthropic.Anthropic(
                base_url=edge_url(stack), api_key=api_key.secret, http_client=http
            )
            return sync.messages.create(model=DEMO, max_tokens=8, messages=HI)

    message = await asyncio.to_thread(call)
    assert message.content[0].type == "text" and message.usage.output_tokens > 0


async def test_a_tool_call_round_trip_through_the_anthropic_upstream(
    client: anthropic.AsyncAnthropic,
    claude: FakeProvider,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    claude.script = Script(
        text=("Let me look.",),
        tool_calls=(ScriptToolCall("toolu_7", "get_weather", ('{"city": ', '"Oslo"}')),),
        finish="tool_calls",
        usage=ScriptUsage(2000, 30, cached_tokens=1500, cache_write_tokens=300),
    )
    question: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await client.messages.create(
        model=CLAUDE, max_tokens=100, messages=question, tools=[WEATHER]
    )
    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and (call.id, call.name) == ("toolu_7", "get_weather")
    assert call.input == {"city": "Oslo"}
    usage = first.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (200, 1500)
    assert (usage.cache_creation_input_tokens, usage.output_tokens) == (300, 30)
    row = await ledger_entry(metering, first.id)
    assert (row.usage.prompt_tokens, row.usage.cached_tokens) == (2000, 1500)

    claude.script = Script(text=("It is ", "12C."))
    answer: list[Any] = [
        *question,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "12C"}],
        },
    ]
    async with client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=answer, tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "It is 12C."
    sent = claude.requests[-1].body["messages"]
    assert sent[1]["content"][-1] == {
        "type": "tool_use",
        "id": "toolu_7",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert sent[2]["content"][0]["type"] == "tool_result"
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_7"


async def test_a_streamed_tool_call_is_assembled_by_the_sdk(
    client: anthropic.AsyncAnthropic, claude: FakeProvider
) -> None:
    claude.script = Script(
        text=(),
        tool_calls=(ScriptToolCall("toolu_8", "get_weather", ('{"ci', 'ty": "Ber', 'gen"}')),),
        finish="tool_calls",
    )
    async with client.messages.stream(
        model=CLAUDE,
        max_tokens=100,
        messages=HI,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert "input_json" in kinds and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Bergen"}
    assert claude.requests[-1].body["tool_choice"] == {"type": "tool", "name": "get_weather"}


async def test_signed_thinking_goes_back_to_anthropic_verbatim(
    client: anthropic.AsyncAnthropic, claude: FakeProvider
) -> None:
    claude.script = Script(
        reasoning=("Oslo is ", "in Norway."),
        signed_reasoning=True,
        text=(),
        tool_calls=(ScriptToolCall("toolu_9", "get_weather", ('{"city": "Oslo"}',)),),
        finish="tool_calls",
    )
    question: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    thinking: anthropic.types.ThinkingConfigEnabledParam = {
        "type": "enabled",
        "budget_tokens": 1024,
    }
    first = await client.messages.create(
        model=CLAUDE, max_tokens=2048, messages=question, tools=[WEATHER], thinking=thinking
    )
    block = first.content[0]
    assert block.type == "thinking" and block.thinking == "Oslo is in Norway."
    assert block.signature == signature_for("Oslo is in Norway.")
    assert claude.requests[-1].body["thinking"] == thinking
    claude.script = Script(text=("Sunny.",), signed_reasoning=True, reasoning=("ok",))
    follow_up: list[Any] = [
        *question,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]},
    ]
    # The fake refuses, as Anthropic does, a thinking turn sent back unsigned or altered.
    second = await client.messages.create(
        model=CLAUDE, max_tokens=2048, messages=follow_up, tools=[WEATHER], thinking=thinking
    )
    assert [b.type for b in second.content] == ["thinking", "text"]
    sent = claude.requests[-1].body
    assert sent["thinking"] == thinking
    assert sent["messages"][1]["content"][0]["signature"] == block.signature


async def test_streamed_signed_thinking_keeps_its_signature_for_the_next_turn(
    client: anthropic.AsyncAnthropic, claude: FakeProvider
) -> None:
    claude.script = Script(
        reasoning=("Bergen is ", "rainy."),
        signed_reasoning=True,
        text=(),
        tool_calls=(ScriptToolCall("toolu_7", "get_weather", ('{"city": "Bergen"}',)),),
        finish="tool_calls",
    )
    question: list[Any] = [{"role": "user", "content": "Weather in Bergen?"}]
    thinking: anthropic.types.ThinkingConfigEnabledParam = {
        "type": "enabled",
        "budget_tokens": 1024,
    }
    async with client.messages.stream(
        model=CLAUDE, max_tokens=2048, messages=question, tools=[WEATHER], thinking=thinking
    ) as stream:
        kinds = [event.type async for event in stream]
        first = await stream.get_final_message()
    assert "signature" in kinds  # signature_delta, inside the thinking block, before its stop
    block = first.content[0]
    assert block.type == "thinking" and block.thinking == "Bergen is rainy."
    assert block.signature == signature_for("Bergen is rainy.")
    claude.script = Script(text=("Wet.",), signed_reasoning=True, reasoning=("ok",))
    follow_up: list[Any] = [
        *question,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_7"}]},
    ]
    second = await client.messages.create(  # the fake refuses a thinking turn sent unsigned
        model=CLAUDE, max_tokens=2048, messages=follow_up, tools=[WEATHER], thinking=thinking
    )
    assert [b.type for b in second.content] == ["thinking", "text"]
    assert claude.requests[-1].body["messages"][1]["content"][0]["signature"] == block.signature


async def test_pings_keep_a_slow_first_token_alive_and_the_sdk_reads_through_them(
    client: anthropic.AsyncAnthropic, claude: FakeProvider
) -> None:
    claude.script = Script(text=("Patience",), headers_delay=2.5)
    async with client.messages.stream(model=CLAUDE, max_tokens=64, messages=HI) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"  # the SDK skipped the pings before it
    assert [b.text for b in final.content if b.type == "text"] == ["Patience"]


async def test_a_bad_key_is_an_authentication_error(stack: Stack) -> None:
    async with anthropic.DefaultAsyncHttpxClient(verify=edge_trust(stack), timeout=30) as http:
        bad = anthropic.AsyncAnthropic(
            base_url=edge_url(stack), api_key="sk-nope", http_client=http, max_retries=0
        )
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await bad.messages.create(model=DEMO, max_tokens=8, messages=HI)
    assert refused.value.status_code == 401
    body: Any = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert refused.value.request_id


async def test_a_bad_field_is_a_bad_request_naming_it(client: anthropic.AsyncAnthropic) -> None:
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/tiff", "data": "AA=="},
    }
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(
            model=DEMO,
            max_tokens=8,
            messages=[{"role": "user", "content": [image]}],
        )
    body: Any = refused.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].source.media_type" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as out_of_range:
        await client.messages.create(
            model=DEMO, max_tokens=8, messages=HI, extra_body={"temperature": 3}
        )
    assert "temperature: must be between 0 and 2" in str(out_of_range.value)


async def test_an_unknown_model_is_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nobody/nothing", max_tokens=8, messages=HI)
    body: Any = missing.value.body
    assert body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        b'{"model": "switchboard/demo", "max_tokens": 1e400, "messages": []}',
        b'{"model": "switchboard/demo", "max_tokens": 99999999999999999999999, "messages": []}',
        b'{"model": "switchboard/demo", "max_tokens": 8, "messages": '
        b'[{"role": "user", "content": "a\\u0000b"}]}',
        b'{"model": "switchboard/demo", "max_tokens": 8, "messages": '
        b'[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", '
        b'"input": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}]}]}",
    ],
)
async def test_malformed_bodies_are_400s_in_anthropics_error_json(
    stack: Stack, api_key: metering_pb2.CreateApiKeyResponse, payload: bytes
) -> None:
    async with httpx.AsyncClient(verify=edge_trust(stack), timeout=30) as http:
        reply = await http.post(
            edge_url(stack) + "/v1/messages",
            content=payload,
            headers={"x-api-key": api_key.secret, "content-type": "application/json"},
        )
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["request_id"] == reply.headers["request-id"]


async def test_a_failure_after_the_stream_started_is_an_error_event(
    client: anthropic.AsyncAnthropic,
    claude: FakeProvider,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    claude.script = Script(text=("one ", "two ", "three"), fail_after=2)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client.messages.stream(model=CLAUDE, max_tokens=50, messages=HI) as stream:
            async for event in stream:
                seen.append(event.type)
                if event.type == "message_start":
                    generation = event.message.id
    assert seen[0] == "message_start" and "text" in seen
    assert failed.value.status_code == 200  # the status was sent before the failure
    body: Any = failed.value.body
    assert body["type"] == "error" and body["error"]["type"] in ("api_error", "overloaded_error")
    row = await ledger_entry(metering, generation)
    assert row.status == metering_pb2.GENERATION_STATUS_FAILED


async def test_a_client_leaving_a_stream_cuts_it_and_it_is_metered(
    client: anthropic.AsyncAnthropic,
    claude: FakeProvider,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    claude.script = Script(text=tuple(f"w{i} " for i in range(400)), chunk_delay=0.01)
    claude.disconnected.clear()
    async with client.messages.stream(model=CLAUDE, max_tokens=500, messages=HI) as stream:
        async for event in stream:
            if event.type == "message_start":
                generation = event.message.id
            if event.type == "text":
                break
    await asyncio.wait_for(claude.disconnected.wait(), 5.0)
    row = await ledger_entry(metering, generation)
    assert row.status == metering_pb2.GENERATION_STATUS_CANCELLED
    assert row.usage.completion_tokens > 0


async def test_an_upstream_rate_limit_is_a_rate_limit_error(
    client: anthropic.AsyncAnthropic, claude: FakeProvider
) -> None:
    """Last in the module: the upstream's retry-after cools its endpoint down that long."""
    claude.script = Script(status=429, retry_after="7")
    with pytest.raises(anthropic.APIStatusError) as limited:
        await client.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
    body: Any = limited.value.body
    status = limited.value.status_code
    assert (status, body["error"]["type"]) == (429, "rate_limit_error")
    assert limited.value.response.headers["retry-after"] == "7"
