"""The router's OpenAI-compatible HTTP edge, through the official ``openai`` Python SDK (sync and
async clients, streamed and whole, tools, errors) over TLS with the stack's development CA,
against the real processes: the demo model, and the seeded DeepSeek model pointed at a local
fake that speaks OpenAI's wire format. Each generation is checked in the ledger.

The sync client runs in a worker thread: the fakes serve from this test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.e2e.support import edge_trust, edge_url, ledger_entry
from tests.fakes import openai_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, ScriptUsage

pytestmark = [pytest.mark.e2e]
# Keep-alive lines after 1 s without a first event (15 s by default), so a slow first token
# shows them within the test's time.
STACK_ENV = {"SWITCHBOARD_HTTP_KEEPALIVE_SECONDS": "1"}

DEMO = "switchboard/demo"
DEEPSEEK = "deepseek/deepseek-v4-flash"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
T = TypeVar("T")


def openai_url(stack: Stack) -> str:
    return edge_url(stack) + "/v1"


@pytest.fixture(scope="module")
async def client(
    stack: Stack, api_key: metering_pb2.CreateApiKeyResponse
) -> AsyncIterator[openai.OpenAI]:
    http = openai.DefaultHttpxClient(verify=edge_trust(stack), timeout=30)
    yield openai.OpenAI(base_url=openai_url(stack), api_key=api_key.secret, http_client=http)
    await asyncio.to_thread(http.close)


@pytest.fixture(scope="module")
async def aclient(
    stack: Stack, api_key: metering_pb2.CreateApiKeyResponse
) -> AsyncIterator[openai.AsyncOpenAI]:
    http = openai.DefaultAsyncHttpxClient(verify=edge_trust(stack), timeout=30)
    yield openai.AsyncOpenAI(base_url=openai_url(stack), api_key=api_key.secret, http_client=http)
    await http.aclose()


@pytest.fixture(scope="module")
async def deepseek(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
) -> AsyncIterator[FakeProvider]:
    """The seeded DeepSeek provider, pointed at a fake through the catalog's admin API."""
    async with openai_server.serve(Script()) as fake:
        providers = await catalog.ListProviders(catalog_pb2.ListProvidersRequest())
        for provider in providers.providers:
            if provider.id == "deepseek":
                provider.base_url = fake.base_url
                await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
        yield fake


async def in_thread(call: Callable[[], T]) -> T:
    return await asyncio.to_thread(call)


async def once_routed(fake: FakeProvider, call: Callable[[], Any]) -> Any:
    """``call`` once the router's catalog points at the fake (its watch takes a moment)."""
    for _ in range(100):
        seen = len(fake.requests)
        try:
            return await call()
        except (openai.BadRequestError, openai.InternalServerError) as error:
            if len(fake.requests) > seen or error.status_code not in (400, 503):
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the router never reached the fake provider")


async def test_sync_client_whole_completion_is_metered_with_its_generation_id(
    client: openai.OpenAI, metering: metering_pb2_grpc.MeteringServiceAsyncStub
) -> None:
    raw = await in_thread(
        lambda: client.chat.completions.with_raw_response.create(
            model=DEMO, messages=HI, max_tokens=5, extra_headers={"X-Request-Id": "edge-req-1"}
        )
    )
    assert raw.headers["x-request-id"] == "edge-req-1"
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == DEMO
    assert (completion.model_extra or {})["provider"] == "switchboard"
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "length"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == 5
    row = await ledger_entry(metering, completion.id)
    assert (row.usage.prompt_tokens, row.usage.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    extra = usage.model_extra or {}
    assert Decimal(extra["cost_usd"]) == Decimal(row.cost_usd) and extra["cost"] > 0


async def test_sync_client_stream_ends_with_usage_and_cost(
    client: openai.OpenAI, metering: metering_pb2_grpc.MeteringServiceAsyncStub
) -> None:
    def run() -> list[Any]:
        stream = client.chat.completions.create(
            model=DEMO,
            messages=HI,
            max_completion_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        return list(stream)

    chunks = await in_thread(run)
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len(
        {c.id for c in chunks}
    ) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    last = chunks[-1]
    assert last.choices == [] and last.usage and last.usage.completion_tokens == 6
    row = await ledger_entry(metering, last.id)
    assert Decimal((last.usage.model_extra or {})["cost_usd"]) == Decimal(row.cost_usd)


async def test_async_client_streams_and_answers_whole(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=DEMO, messages=HI, max_tokens=4, stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    whole = await aclient.chat.completions.create(model=DEMO, messages=HI, max_tokens=4)
    assert "".join(pieces) == whole.choices[0].message.content


async def test_models_list_the_keys_models_in_openai_shape(aclient: openai.AsyncOpenAI) -> None:
    models = [m async for m in aclient.models.list()]
    demo = next(m for m in models if m.id == DEMO)
    assert demo.object == "model" and demo.owned_by == "switchboard"
    extra = demo.model_extra or {}
    assert extra["context_length"] > 0 and "prompt" in extra["pricing"]


async def test_a_slow_first_token_is_kept_alive_and_the_sdk_reads_through_it(
    aclient: openai.AsyncOpenAI, deepseek: FakeProvider, stack: Stack
) -> None:
    deepseek.script = Script(text=("Slow", " but sure"), headers_delay=2.5)
    stream = await once_routed(
        deepseek,
        lambda: aclient.chat.completions.create(model=DEEPSEEK, messages=HI, stream=True),
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Slow but sure"
    # The same on the wire: comments first (the SDK skipped them), then the chunks.
    async with (
        httpx.AsyncClient(verify=edge_trust(stack), timeout=30) as http,
        http.stream(
            "POST",
            f"{openai_url(stack)}/chat/completions",
            json={"model": DEEPSEEK, "messages": HI, "stream": True},
            headers={"Authorization": f"Bearer {aclient.api_key}"},
        ) as response,
    ):
        raw = b"".join([part async for part in response.aiter_bytes()])
    assert response.status_code == 200
    assert raw.startswith(b": keep-alive\n\n: keep-alive\n\n")
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_tool_calls_stream_and_answer_whole_in_openai_shape(
    aclient: openai.AsyncOpenAI, deepseek: FakeProvider
) -> None:
    call = ScriptToolCall("call_7", "get_weather", ('{"city"', ': "Paris"}'))
    deepseek.script = Script(text=(), tool_calls=(call,), finish="tool_calls")
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather in Paris?"}]
    whole = await once_routed(
        deepseek,
        lambda: aclient.chat.completions.create(model=DEEPSEEK, messages=ask, tools=tools),
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    made = choice.message.tool_calls[0]
    assert (made.id, made.function.name, made.function.arguments) == (
        "call_7",
        "get_weather",
        '{"city": "Paris"}',
    )
    sent = deepseek.requests[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    stream = await aclient.chat.completions.create(
        model=DEEPSEEK, messages=ask, tools=tools, tool_choice="required", stream=True
    )
    pieces = [
        t
        for c in [c async for c in stream]
        if c.choices
        for t in c.choices[0].delta.tool_calls or ()
    ]
    assert (
        pieces[0].id == "call_7" and pieces[0].function and pieces[0].function.name == "get_weather"
    )
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == '{"city": "Paris"}'
    assert deepseek.requests[-1].body["tool_choice"] == "required"
    answer: list[Any] = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [made.model_dump()]},
        {"role": "tool", "tool_call_id": "call_7", "content": "sunny"},
    ]
    deepseek.script = Script(text=("Sunny",))
    final = await aclient.chat.completions.create(model=DEEPSEEK, messages=answer, tools=tools)
    assert final.choices[0].message.content == "Sunny"
    assert deepseek.requests[-1].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_7",
        "content": "sunny",
    }


async def test_reasoning_streams_as_openrouter_sends_it(
    aclient: openai.AsyncOpenAI, deepseek: FakeProvider
) -> None:
    deepseek.script = Script(
        reasoning=("Let me ", "think."), text=("42",), usage=ScriptUsage(10, 8, reasoning_tokens=5)
    )
    stream = await once_routed(
        deepseek,
        lambda: aclient.chat.completions.create(
            model=DEEPSEEK,
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"reasoning": {"effort": "high"}},
        ),
    )
    chunks = [c async for c in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == "Let me think."
    assert "".join(d.content or "" for d in deltas) == "42"
    details = chunks[-1].usage.completion_tokens_details
    assert details and details.reasoning_tokens == 5


async def test_an_upstream_failing_mid_stream_ends_the_stream_with_an_error_event(
    aclient: openai.AsyncOpenAI, deepseek: FakeProvider
) -> None:
    deepseek.script = Script(text=("a", "b", "c", "d"), fail_after=2)
    stream = await once_routed(
        deepseek,
        lambda: aclient.chat.completions.create(model=DEEPSEEK, messages=HI, stream=True),
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "ab"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"].startswith("upstream")


async def test_errors_have_openai_status_and_json(
    stack: Stack, aclient: openai.AsyncOpenAI
) -> None:
    bad_key = aclient.with_options(api_key="sk-sb-not-a-real-key")
    with pytest.raises(openai.AuthenticationError):
        await bad_key.chat.completions.create(model=DEMO, messages=HI)
    with pytest.raises(openai.BadRequestError) as bad:
        await aclient.chat.completions.create(model=DEMO, messages=HI, temperature=7)
    assert bad.value.param == "temperature"
    assert bad.value.code == "invalid_argument"
    with pytest.raises(openai.BadRequestError) as typed:
        await aclient.chat.completions.create(
            model=DEMO, messages=HI, extra_body={"max_tokens": "9"}
        )
    assert typed.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        await aclient.chat.completions.create(model="nobody/no-such-model", messages=HI)
    assert missing.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", ""),
        (b"[1, 2]", ""),
        (
            b'{"model": "switchboard/demo", "messages": [{"role": "user", "content": "\\u0000"}]}',
            "messages[0].content",
        ),
        (b'{"model": "switchboard/demo", "messages": [], "max_tokens": 1e300}', "max_tokens"),
        (b'{"model": "switchboard/demo", "messages": [], "temperature": 1e999}', ""),
    ],
)
async def test_bad_bodies_are_400_never_500(
    stack: Stack, api_key: metering_pb2.CreateApiKeyResponse, content: bytes, field: str
) -> None:
    async with httpx.AsyncClient(verify=edge_trust(stack)) as http:
        reply = await http.post(
            f"{openai_url(stack)}/chat/completions",
            content=content,
            headers={"Authorization": f"Bearer {api_key.secret}"},
        )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    if field:
        assert error["param"] == field


async def test_a_client_that_leaves_mid_stream_cuts_the_generation_and_it_is_metered(
    stack: Stack,
    api_key: metering_pb2.CreateApiKeyResponse,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    body = {"model": DEMO, "messages": HI, "max_tokens": 2000, "stream": True}
    headers = {"Authorization": f"Bearer {api_key.secret}"}
    async with (
        httpx.AsyncClient(verify=edge_trust(stack)) as http,
        http.stream(
            "POST", f"{openai_url(stack)}/chat/completions", json=body, headers=headers
        ) as reply,
    ):
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = reply.aiter_lines()
        first = await anext(lines)
        generation_id = first.removeprefix("data: ").split('"id":"', 1)[1].split('"', 1)[0]
    row = await ledger_entry(metering, generation_id)
    assert row.status == metering_pb2.GENERATION_STATUS_CANCELLED
    assert 0 < row.usage.completion_tokens < 2000
    assert row.finish_reason in (
        common_pb2.FINISH_REASON_CANCELLED,
        common_pb2.FINISH_REASON_UNSPECIFIED,
    )
