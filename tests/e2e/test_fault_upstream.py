"""Upstream stalls through the real router process, with 1 s stall limits (``STACK_ENV``).

A model served by two local OpenAI-compatible fakes, the cheaper (tried first) scripted to
stall: silent before answering, the request falls back to the other within the first-byte
limit; silent after its first tokens, the client's stream ends ``UNAVAILABLE`` /
``UPSTREAM_STALLED`` naming the provider within the idle limit and the ledger bills what was
delivered; a longer limit on the model in the catalog lets the slow one through.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from tests.e2e.support import auth, ledger_entry
from tests.fakes import openai_server
from tests.fakes.script import FakeProvider, Script

pytestmark = [pytest.mark.e2e]

SLOW, BACKUP = "stallslow", "stallbackup"
STACK_ENV = {
    "SWITCHBOARD_UPSTREAM_FIRST_BYTE_SECONDS": "1",
    "SWITCHBOARD_UPSTREAM_IDLE_SECONDS": "1",
    **{f"SWITCHBOARD_PROVIDER_KEY_{p.upper()}": f"sk-{p}" for p in (SLOW, BACKUP)},
    **{f"SWITCHBOARD_PROVIDER_HOSTS_{p.upper()}": "127.0.0.1" for p in (SLOW, BACKUP)},
}
MODEL = f"sbtest/stalls-{uuid.uuid4().hex[:8]}"


def model_entry(first_byte_ms: int = 0) -> catalog_pb2.Model:
    return catalog_pb2.Model(
        id=MODEL,
        display_name="Stall test model",
        context_length=8192,
        input_modalities=["text"],
        output_modalities=["text"],
        stall_limits=catalog_pb2.StallLimits(first_byte_ms=first_byte_ms),
    )


@pytest.fixture(scope="module")
async def fakes(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
) -> AsyncIterator[dict[str, FakeProvider]]:
    """Two providers of MODEL at local fakes; SLOW is the cheaper, so it is tried first."""
    async with AsyncExitStack() as stack:
        found = {
            p: await stack.enter_async_context(openai_server.serve(Script()))
            for p in (SLOW, BACKUP)
        }
        await catalog.UpsertModel(catalog_pb2.UpsertModelRequest(model=model_entry()))
        for provider, price in ((SLOW, "1"), (BACKUP, "2")):
            await catalog.UpsertProvider(
                catalog_pb2.UpsertProviderRequest(
                    provider=catalog_pb2.Provider(
                        id=provider,
                        display_name=provider,
                        api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
                        base_url=found[provider].base_url,
                    )
                )
            )
            endpoint = catalog_pb2.Endpoint(
                model_id=MODEL,
                provider_id=provider,
                upstream_model="m",
                pricing=common_pb2.Pricing(
                    prompt_usd_per_mtok=price, completion_usd_per_mtok=price
                ),
                context_length=8192,
            )
            await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
        yield found


async def router_model(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: metering_pb2.CreateApiKeyResponse
) -> catalog_pb2.Model | None:
    reply = await router.ListModels(
        account_pb2.ListModelsRequest(provider_id=SLOW, page_size=500), metadata=auth(key)
    )
    return next((m for m in reply.models if m.id == MODEL), None)


async def until_router_has(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    first_byte_ms: int,
) -> None:
    """Wait for the router's catalog watch to bring MODEL, with its two endpoints and limit."""
    for _ in range(200):
        model = await router_model(router, key)
        if (
            model is not None
            and len(model.endpoints) == 2
            and model.stall_limits.first_byte_ms == first_byte_ms
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the router never saw the test model")


def ask() -> router_pb2.StreamCompletionRequest:
    """Cheapest first (``sort=price``): the default's order is a price-weighted draw."""
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")
    return router_pb2.StreamCompletionRequest(
        model=MODEL,
        messages=[message],
        max_tokens=64,
        provider=router_pb2.ProviderPreferences(sort=router_pb2.PROVIDER_SORT_PRICE),
    )


async def test_a_silent_upstream_falls_back_within_the_first_byte_limit(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: dict[str, FakeProvider],
) -> None:
    await until_router_has(router, api_key, 0)
    fakes[SLOW].script = Script(headers_delay=30)  # accepts, then says nothing
    started = time.monotonic()
    messages = [m async for m in router.StreamCompletion(ask(), metadata=auth(api_key))]
    elapsed = time.monotonic() - started
    assert len(fakes[SLOW].requests) == 1  # it was asked first
    assert messages[0].start.provider == BACKUP
    assert messages[-1].HasField("end")
    assert 0.9 < elapsed < 4.0  # the 1 s first-byte limit, then the backup's answer
    row = await ledger_entry(metering, messages[0].start.generation_id)
    assert (row.provider_id, row.attempt) == (BACKUP, 1)


async def test_a_stream_stalled_after_its_first_tokens_ends_unavailable_and_is_billed(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: dict[str, FakeProvider],
) -> None:
    await until_router_has(router, api_key, 0)
    fakes[SLOW].script = Script(text=("Hello", " there", " and", " more"), stall_after=2)
    backup_before = len(fakes[BACKUP].requests)
    received: list[router_pb2.StreamCompletionResponse] = []
    last_token = 0.0
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for message in router.StreamCompletion(ask(), metadata=auth(api_key)):
            received.append(message)
            last_token = time.monotonic()
    ended = time.monotonic() - last_token
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert SLOW in (error.details() or "")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
    assert info.reason == "UPSTREAM_STALLED" and info.metadata["provider"] == SLOW
    assert 0.9 < ended < 3.0  # the 1 s idle limit after the last token
    assert received[0].start.provider == SLOW
    assert "".join(m.delta.text for m in received[1:]) == "Hello there"
    assert len(fakes[BACKUP].requests) == backup_before  # committed: no fallback mid-stream
    row = await ledger_entry(metering, received[0].start.generation_id)
    assert row.status == metering_pb2.GENERATION_STATUS_FAILED
    assert 0 < row.usage.completion_tokens <= 4  # what was delivered, not more


async def test_a_longer_model_limit_in_the_catalog_lets_a_slow_provider_through(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: dict[str, FakeProvider],
) -> None:
    await catalog.UpsertModel(catalog_pb2.UpsertModelRequest(model=model_entry(5000)))
    await until_router_has(router, api_key, 5000)
    fakes[SLOW].script = Script(headers_delay=2)  # past the router's 1 s, within the model's 5 s
    messages = [m async for m in router.StreamCompletion(ask(), metadata=auth(api_key))]
    assert messages[0].start.provider == SLOW
    assert messages[-1].HasField("end")
