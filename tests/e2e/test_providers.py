"""The catalog's seeded Anthropic, Gemini and DeepSeek models answer through the real router
processes, against local fakes that speak each provider's wire format (checked by the official
SDKs).

The catalog's admin API points the seeded providers at the fakes, exactly as an operator would
point them at a proxy; the router picks the change up through its catalog watch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.pricing import Counts, PriceSheet
from tests.e2e.support import PROVIDER_KEYS, auth, ledger_entry, limited_key, stream_to_fake
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.script import FakeProvider, Script, ScriptToolCall, ScriptUsage

pytestmark = [pytest.mark.e2e]

CLAUDE = "anthropic/claude-haiku-4.5"
# Seeded models with no announced retirement: the tests must not depend on the date they run.
GEMINI = "google/gemini-2.5-flash-lite"
DEEPSEEK = "deepseek/deepseek-v4-flash"

Fakes = dict[str, FakeProvider]


@pytest.fixture(scope="module")
async def fakes(catalog: catalog_pb2_grpc.CatalogServiceAsyncStub) -> AsyncIterator[Fakes]:
    async with AsyncExitStack() as stack:
        found: Fakes = {
            "anthropic": await stack.enter_async_context(anthropic_server.serve(Script())),
            "google": await stack.enter_async_context(gemini_server.serve(Script())),
            "deepseek": await stack.enter_async_context(openai_server.serve(Script())),
        }
        providers = await catalog.ListProviders(catalog_pb2.ListProvidersRequest())
        for provider in providers.providers:
            if provider.id in found:
                provider.base_url = found[provider.id].base_url
                await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
        yield found


async def price_of(catalog: catalog_pb2_grpc.CatalogServiceAsyncStub, model: str) -> PriceSheet:
    reply = await catalog.GetModel(catalog_pb2.GetModelRequest(model_id=model))
    return PriceSheet.from_proto(reply.model.endpoints[0].pricing)


def ask(model: str, text: str = "hi", **fields: object) -> router_pb2.StreamCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)
    return router_pb2.StreamCompletionRequest(model=model, messages=[message], **fields)  # type: ignore[arg-type]


async def test_anthropic_model_streams_with_exact_cache_aware_cost(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    usage = ScriptUsage(2000, 40, cached_tokens=1500, cache_write_tokens=300)
    fakes["anthropic"].script = Script(text=("Bonjour", " le ", "monde"), usage=usage)
    messages = await stream_to_fake(
        router, api_key, ask(CLAUDE, "Say hello in French", seed=3), fakes["anthropic"]
    )
    start, end = messages[0].start, messages[-1].end
    assert (start.model, start.provider) == (CLAUDE, "anthropic")
    assert list(start.ignored_parameters) == ["seed"]  # Anthropic has no seed; said, not hidden
    assert "".join(m.delta.text for m in messages[1:-1]) == "Bonjour le monde"
    got = end.usage
    assert (got.prompt_tokens, got.completion_tokens, got.cached_tokens) == (2000, 40, 1500)
    assert (got.cache_write_tokens, got.estimated) == (300, False)
    price = await price_of(catalog, CLAUDE)
    assert Decimal(end.cost_usd) == price.cost(Counts(2000, 40, 1500, 300))
    rates = price.rates(2000)
    assert rates.cached_prompt < rates.prompt < rates.cache_write  # the seed's real structure

    sent = fakes["anthropic"].requests[-1]
    assert sent.headers["x-api-key"] == PROVIDER_KEYS["anthropic"]
    assert "seed" not in sent.body
    row = await ledger_entry(metering, start.generation_id)
    assert (row.provider_id, row.cost_usd, row.attempt) == ("anthropic", end.cost_usd, 0)
    assert row.usage.cache_write_tokens == 300


async def test_require_parameters_refuses_instead_of_dropping(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    before = len(fakes["anthropic"].requests)
    strict = ask(CLAUDE, seed=3, provider=router_pb2.ProviderPreferences(require_parameters=True))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _ = [m async for m in router.StreamCompletion(strict, metadata=auth(api_key))]
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "seed" in (refused.value.details() or "")
    assert len(fakes["anthropic"].requests) == before  # nothing was sent upstream


async def test_gemini_tool_call_streams_and_unary_matches_the_stream(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fakes["google"].script = Script(
        text=("Let me look.",),
        tool_calls=(ScriptToolCall("call_1", "get_weather", ('{"city": ', '"Oslo"}')),),
        finish="tool_calls",
        usage=ScriptUsage(50, 12, reasoning_tokens=4),
    )
    tool = router_pb2.Tool(
        name="get_weather",
        description="Weather in a city",
        parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}',
    )
    request = ask(GEMINI, "Weather in Oslo?", tools=[tool])
    messages = await stream_to_fake(router, api_key, request, fakes["google"])
    deltas = [m.delta for m in messages[1:-1]]
    text = "".join(d.text for d in deltas)
    calls = [d.tool_call for d in deltas if d.HasField("tool_call")]
    assert text == "Let me look."
    assert calls[0].name == "get_weather" and calls[0].id
    assert json.loads("".join(c.arguments_json for c in calls)) == {"city": "Oslo"}
    end = messages[-1].end
    assert end.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert (end.usage.completion_tokens, end.usage.reasoning_tokens) == (12, 4)

    unary_request = router_pb2.CreateCompletionRequest()
    unary_request.ParseFromString(request.SerializeToString())  # same fields, same numbers
    reply = await router.CreateCompletion(unary_request, metadata=auth(api_key))
    assert reply.text == text
    assert [(c.name, json.loads(c.arguments_json)) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert reply.usage == end.usage and reply.cost_usd == end.cost_usd
    body = fakes["google"].requests[-1].body
    assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"


async def test_an_overloaded_provider_falls_back_to_the_next_model(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fakes["anthropic"].script = Script(status=529)
    fakes["google"].script = Script(text=("from ", "gemini"))
    request = ask(CLAUDE, fallback_models=[GEMINI])
    overloaded_before = len(fakes["anthropic"].requests)
    messages = await stream_to_fake(router, api_key, request, fakes["google"])
    assert messages[0].start.model == GEMINI
    assert "".join(m.delta.text for m in messages[1:-1]) == "from gemini"
    # The ledger row says which upstream try produced the usage.
    row = await ledger_entry(metering, messages[0].start.generation_id)
    assert row.attempt == len(fakes["anthropic"].requests) - overloaded_before >= 1
    fakes["anthropic"].script = Script(status=529)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        _ = [m async for m in router.StreamCompletion(ask(CLAUDE), metadata=auth(api_key))]
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "anthropic" in (failed.value.details() or "").lower()


async def test_cancelling_a_stream_closes_the_provider_connection_and_meters_it(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fake = fakes["anthropic"]
    fake.script = Script(text=tuple(f"w{i} " for i in range(500)), chunk_delay=0.01)
    fake.disconnected.clear()
    call = router.StreamCompletion(ask(CLAUDE), metadata=auth(api_key))
    start = await call.read()
    assert isinstance(start, router_pb2.StreamCompletionResponse)
    await call.read()
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    call.cancel()
    await asyncio.wait_for(fake.disconnected.wait(), 2.0)
    assert fake.disconnected_at - cancelled_at < 0.5
    row = await ledger_entry(metering, start.start.generation_id)
    assert row.status == metering_pb2.GENERATION_STATUS_CANCELLED
    assert row.usage.completion_tokens > 0
    # The prompt's count is Anthropic's own (message_start said 12), not an estimate of "hi";
    # only the completion is estimated, and the row says so.
    assert (row.usage.prompt_tokens, row.usage.estimated) == (12, True)


async def test_a_provider_that_reports_no_usage_is_estimated_and_marked(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fakes["google"].script = Script(text=("twelve chars", " and sixteen more"), usage=None)
    messages = await stream_to_fake(router, api_key, ask(GEMINI, "x" * 400), fakes["google"])
    end = messages[-1].end
    assert end.usage.estimated
    assert end.usage.completion_tokens == (len("twelve chars and sixteen more") + 3) // 4
    assert end.usage.prompt_tokens >= 100  # 400 characters at about four a token
    row = await ledger_entry(metering, messages[0].start.generation_id)
    assert row.usage.estimated and row.status == metering_pb2.GENERATION_STATUS_COMPLETED
    assert row.cost_usd == end.cost_usd


async def test_a_limited_key_without_max_tokens_is_sent_the_bound_it_reserved(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fake = fakes["google"]
    fake.script = Script(text=("bounded",))
    await stream_to_fake(router, api_key, ask(GEMINI), fake)
    unlimited = fake.requests[-1].body.get("generationConfig", {})
    assert "maxOutputTokens" not in unlimited  # nothing reserved, nothing imposed

    limited = await limited_key(metering, "e2e-bounded", metering_pb2.SpendLimits(daily_usd="5"))
    await stream_to_fake(router, limited, ask(GEMINI), fake)
    model = await catalog.GetModel(catalog_pb2.GetModelRequest(model_id=GEMINI))
    cap = model.model.endpoints[0].max_completion_tokens
    ceiling = 4096  # SWITCHBOARD_RESERVATION_CEILING_TOKENS's default
    assert fake.requests[-1].body["generationConfig"]["maxOutputTokens"] == min(cap, ceiling)

    await stream_to_fake(router, limited, ask(GEMINI, max_tokens=77), fake)
    assert fake.requests[-1].body["generationConfig"]["maxOutputTokens"] == 77


async def test_deepseek_reasoning_streams_apart_from_the_answer(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fakes["deepseek"].script = Script(
        reasoning=(
            "2 + 2: add ",
            "the units.",
        ),
        text=("4",),
        usage=ScriptUsage(9, 30, reasoning_tokens=25),
    )
    request = ask(DEEPSEEK, "2+2?", provider=router_pb2.ProviderPreferences(only=["deepseek"]))
    messages = await stream_to_fake(router, api_key, request, fakes["deepseek"])
    assert messages[0].start.provider == "deepseek"
    deltas = [m.delta for m in messages[1:-1]]
    assert "".join(d.reasoning for d in deltas) == "2 + 2: add the units."
    assert "".join(d.text for d in deltas) == "4"
    assert all(not (d.text and d.reasoning) for d in deltas)  # never mixed in one delta
    end = messages[-1].end
    assert (end.usage.completion_tokens, end.usage.reasoning_tokens) == (30, 25)

    unary_request = router_pb2.CreateCompletionRequest()
    unary_request.ParseFromString(request.SerializeToString())
    reply = await router.CreateCompletion(unary_request, metadata=auth(api_key))
    assert (reply.reasoning, reply.text) == ("2 + 2: add the units.", "4")
    assert fakes["deepseek"].requests[-1].headers["authorization"] == "Bearer sk-ds-e2e"


async def test_providers_without_a_credential_are_not_tried(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    # Only Mistral serves this model, and the router has no Mistral key: nothing is sent.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.CreateCompletion(
            router_pb2.CreateCompletionRequest(
                model="mistralai/mistral-large-3",
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
            ),
            metadata=auth(api_key),
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "SWITCHBOARD_PROVIDER_KEY_MISTRAL" in (refused.value.details() or "")
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "PROVIDER_NOT_CONFIGURED"

    # A cheaper Together endpoint for the DeepSeek model, and no Together key here: the router
    # goes straight to DeepSeek, the one provider of the model it has a key for.
    current = await catalog.GetModel(catalog_pb2.GetModelRequest(model_id=DEEPSEEK))
    cheaper = catalog_pb2.Endpoint()
    cheaper.CopyFrom(current.model.endpoints[0])
    cheaper.id, cheaper.provider_id = f"together:{DEEPSEEK}", "together"
    cheaper.ClearField("price_version")
    cheaper.pricing.CopyFrom(
        common_pb2.Pricing(prompt_usd_per_mtok="0.01", completion_usd_per_mtok="0.02")
    )
    await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=cheaper))
    try:
        for _ in range(100):  # until the router's catalog has the new endpoint
            model = await router.ListModels(
                account_pb2.ListModelsRequest(provider_id="together"), metadata=auth(api_key)
            )
            if DEEPSEEK in {m.id for m in model.models}:
                break
            await asyncio.sleep(0.05)
        fakes["deepseek"].script = Script(text=("ok",))
        before = len(fakes["deepseek"].requests)
        messages = await stream_to_fake(router, api_key, ask(DEEPSEEK), fakes["deepseek"])
        assert messages[0].start.provider == "deepseek"
        assert len(fakes["deepseek"].requests) == before + 1
    finally:
        cheaper.status = catalog_pb2.ENDPOINT_STATUS_DISABLED
        await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=cheaper))


# The fakes sign reasoning statelessly: the answer turn keeps the same reasoning, so the fake
# can check the signatures that come back against it.
TOOL_TURN = Script(
    reasoning=("The user wants ", "the weather in Oslo."),
    signed_reasoning=True,
    text=(),
    tool_calls=(ScriptToolCall("call_w1", "get_weather", ('{"city": ', '"Oslo"}')),),
    finish="tool_calls",
    usage=ScriptUsage(60, 40, reasoning_tokens=25),
)
ANSWER_TURN = dataclasses.replace(
    TOOL_TURN, text=("Clear skies in Oslo.",), tool_calls=(), finish="stop"
)

WEATHER_TOOL = router_pb2.Tool(
    name="get_weather",
    description="Weather in a city",
    parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}',
)


def user_turn(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)


async def create(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    request: router_pb2.CreateCompletionRequest,
) -> router_pb2.CreateCompletionResponse:
    return await router.CreateCompletion(request, metadata=auth(key))


async def tool_turn_then_answer(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    fake: FakeProvider,
    model: str,
) -> tuple[router_pb2.CreateCompletionResponse, router_pb2.CreateCompletionRequest]:
    """Turn 1 (thinking, then a tool call) through the router; the turn-2 request that sends
    the call, its signed reasoning and the tool's result back."""
    fake.script = TOOL_TURN
    reasoning = router_pb2.Reasoning(max_tokens=2048)
    question = user_turn("Weather in Oslo?")
    first_request = router_pb2.CreateCompletionRequest(
        model=model, messages=[question], tools=[WEATHER_TOOL], max_tokens=4096, reasoning=reasoning
    )
    await stream_to_fake(router, key, ask(model, "warm up"), fake)  # the router reaches the fake
    first = await create(router, key, first_request)
    call = first.tool_calls[0]
    answered = router_pb2.CreateCompletionRequest(
        model=model,
        messages=[
            question,
            common_pb2.ChatMessage(
                role=common_pb2.ROLE_ASSISTANT,
                tool_calls=first.tool_calls,
                reasoning_details=first.reasoning_details,
            ),
            common_pb2.ChatMessage(
                role=common_pb2.ROLE_TOOL, tool_call_id=call.id, content='{"sky": "clear"}'
            ),
        ],
        tools=[WEATHER_TOOL],
        max_tokens=4096,
        reasoning=reasoning,
    )
    return first, answered


async def test_anthropic_thinking_with_a_tool_call_round_trips_its_signed_blocks(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fake = fakes["anthropic"]
    first, answered = await tool_turn_then_answer(router, api_key, fake, CLAUDE)
    assert fake.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert first.reasoning == "The user wants the weather in Oslo."
    assert first.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    details = list(first.reasoning_details)
    assert [(d.format, d.text) for d in details] == [
        ("anthropic-claude-v1", "The user wants the weather in Oslo.")
    ]
    assert details[0].signature

    fake.script = ANSWER_TURN
    second = await create(router, api_key, answered)
    assert second.text == "Clear skies in Oslo."
    sent = fake.requests[-1].body["messages"][1]["content"]
    assert sent[0] == {
        "type": "thinking",
        "thinking": details[0].text,
        "signature": details[0].signature,
    }
    assert sent[1]["type"] == "tool_use" and sent[1]["input"] == {"city": "Oslo"}

    # Without the signed blocks (a conversation begun on another provider, say) Anthropic
    # refuses a thinking turn after a tool call, so the turn is sent without thinking.
    del answered.messages[1].reasoning_details[:]
    third = await create(router, api_key, answered)
    assert third.text == "Clear skies in Oslo."
    assert "thinking" not in fake.requests[-1].body
    assert fake.requests[-1].body["messages"][1]["content"][0]["type"] == "tool_use"


async def test_gemini_thought_signatures_go_back_with_their_function_calls(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fake = fakes["google"]
    first, answered = await tool_turn_then_answer(router, api_key, fake, GEMINI)
    thinking = fake.requests[-1].body["generationConfig"]["thinkingConfig"]
    assert thinking["thinkingBudget"] == 2048 and thinking["includeThoughts"] is True
    assert first.reasoning == "The user wants the weather in Oslo."
    call = first.tool_calls[0]
    assert call.signature  # Gemini's thoughtSignature on the functionCall part

    fake.script = ANSWER_TURN
    second = await create(router, api_key, answered)
    assert second.text == "Clear skies in Oslo."
    parts = fake.requests[-1].body["contents"][1]["parts"]
    called = [p for p in parts if "functionCall" in p]
    assert called[0]["thoughtSignature"] == call.signature

    answered.messages[1].tool_calls[0].signature = ""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(router, api_key, answered)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_refusal_reaches_the_client_as_its_own_field(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: Fakes,
) -> None:
    fake = fakes["deepseek"]
    fake.script = Script(text=(), refusal=("I can't help ", "with that."))
    request = ask(
        DEEPSEEK, "something harmful", provider=router_pb2.ProviderPreferences(only=["deepseek"])
    )
    messages = await stream_to_fake(router, api_key, request, fake)
    deltas = [m.delta for m in messages[1:-1]]
    assert "".join(d.refusal for d in deltas) == "I can't help with that."
    assert not "".join(d.text for d in deltas)
    assert messages[-1].end.finish_reason == common_pb2.FINISH_REASON_STOP  # as OpenAI sends it
    unary = router_pb2.CreateCompletionRequest()
    unary.ParseFromString(request.SerializeToString())
    reply = await create(router, api_key, unary)
    assert (reply.refusal, reply.text) == ("I can't help with that.", "")
