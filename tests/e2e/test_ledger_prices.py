"""The ledger's price check through the real processes: the demo endpoint's price changes
through the catalog's admin API while a stream is in flight, and every generation, at the old
price and at the new, reaches the ledger with exactly the cost its client was told, none
dead-lettered and none waved through unchecked; a RecordUsage forged with the router's
identity at 1,000 times the price is refused by name."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts, PriceSheet
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth

pytestmark = [pytest.mark.e2e]

# A forged cost is refused once metering's view has had this long to hear of any change.
STACK_ENV = {"SWITCHBOARD_LEDGER_PRICE_SETTLE_SECONDS": "2"}
DEMO_MODEL = "switchboard/demo"
# An entry deferred (its price not yet known to metering) is checked again when claimed.
LEDGER_WAIT_SECONDS = 45.0

Told = tuple[str, Decimal, common_pb2.Usage]  # generation id, cost, usage
EOF = grpc.aio.EOF  # type: ignore[attr-defined]


async def demo_endpoint(catalog: catalog_pb2_grpc.CatalogServiceAsyncStub) -> catalog_pb2.Endpoint:
    reply = await catalog.GetModel(catalog_pb2.GetModelRequest(model_id=DEMO_MODEL))
    [endpoint] = reply.model.endpoints
    return endpoint


def price_of(endpoint: catalog_pb2.Endpoint) -> PriceSheet:
    return PriceSheet.from_proto(endpoint.pricing)


def cost(price: PriceSheet, usage: common_pb2.Usage) -> Decimal:
    return price.cost(Counts.of(usage))


@pytest.fixture
async def original_price(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
) -> AsyncIterator[catalog_pb2.Endpoint]:
    """The demo endpoint as it was, restored afterwards (the database outlives the stack)."""
    endpoint = await demo_endpoint(catalog)
    yield endpoint
    await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))


def ask(max_tokens: int) -> router_pb2.StreamCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="price check")
    return router_pb2.StreamCompletionRequest(
        model=DEMO_MODEL, messages=[message], max_tokens=max_tokens
    )


async def finish(stream: grpc.aio.UnaryStreamCall, generation_id: str = "") -> Told:  # type: ignore[type-arg]
    """Read a stream to its end; ``generation_id`` when the caller read its start already."""
    end = None
    while (message := await stream.read()) is not EOF:
        assert isinstance(message, router_pb2.StreamCompletionResponse)
        if message.WhichOneof("event") == "start":
            generation_id = message.start.generation_id
        elif message.WhichOneof("event") == "end":
            end = message.end
    assert generation_id and end is not None
    return generation_id, Decimal(end.cost_usd), end.usage


async def in_ledger(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub, generation_id: str
) -> metering_pb2.UsageEvent:
    deadline = time.monotonic() + LEDGER_WAIT_SECONDS
    while True:
        try:
            request = metering_pb2.GetGenerationRequest(generation_id=generation_id)
            return (await metering.GetGeneration(request)).generation
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert time.monotonic() < deadline, f"{generation_id} never reached the ledger"
            await asyncio.sleep(0.1)


async def metering_counters(stack: Stack) -> dict[str, float]:
    """Metering's dead-letter and unverified-cost counters (summed over labels)."""
    url = f"http://127.0.0.1:{stack.ports.metering_metrics}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    wanted = ("switchboard_usage_events_dead_lettered", "switchboard_usage_cost_unverified")
    totals = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


async def test_generations_at_both_prices_reach_the_ledger_exactly(
    stack: Stack,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    original_price: catalog_pb2.Endpoint,
) -> None:
    old = price_of(original_price)
    counted_before = await metering_counters(stack)
    told: list[Told] = [await finish(router.StreamCompletion(ask(5), metadata=auth(api_key)))]

    # A stream in flight when the price changes: routed, and so priced, at the old price.
    in_flight = router.StreamCompletion(ask(40), metadata=auth(api_key))
    first = await in_flight.read()
    assert isinstance(first, router_pb2.StreamCompletionResponse) and first.HasField("start")
    changed = catalog_pb2.Endpoint()
    changed.CopyFrom(original_price)
    changed.pricing.prompt_usd_per_mtok = "3.5"
    changed.pricing.completion_usd_per_mtok = "11"
    await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=changed))
    new = price_of(changed)
    told.append(await finish(in_flight, first.start.generation_id))
    assert told[-1][1] == cost(old, told[-1][2])

    # Streams just after the change, until the router has the new price.
    deadline = time.monotonic() + 20
    while True:
        told.append(await finish(router.StreamCompletion(ask(5), metadata=auth(api_key))))
        if told[-1][1] == cost(new, told[-1][2]):
            break
        assert time.monotonic() < deadline, "the router never priced at the new price"
    told.append(await finish(router.StreamCompletion(ask(7), metadata=auth(api_key))))

    priced = {"old": 0, "new": 0}
    for generation_id, told_cost, usage in told:
        row = await in_ledger(metering, generation_id)
        assert Decimal(row.cost_usd) == told_cost
        assert row.usage.prompt_tokens == usage.prompt_tokens
        assert row.usage.completion_tokens == usage.completion_tokens
        priced["old" if told_cost == cost(old, usage) else "new"] += 1
        assert told_cost in (cost(old, usage), cost(new, usage))
    assert priced["old"] >= 2 and priced["new"] >= 2
    # Every one of them checked, and none refused.
    assert await metering_counters(stack) == counted_before


async def test_a_forged_cost_is_refused_naming_it(
    stack: Stack,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
) -> None:
    endpoint = await demo_endpoint(catalog)

    def event(multiple: int) -> metering_pb2.UsageEvent:
        usage = common_pb2.Usage(prompt_tokens=120, completion_tokens=40)
        out = metering_pb2.UsageEvent(
            generation_id=f"gen-forged-{uuid.uuid4().hex}",
            key_id=api_key.api_key.id,
            account_id=api_key.api_key.account_id,
            model_id=endpoint.model_id,
            provider_id=endpoint.provider_id,
            endpoint_id=endpoint.id,
            upstream_model=endpoint.upstream_model,
            usage=usage,
            cost_usd=format_usd(cost(price_of(endpoint), usage) * multiple),
            finish_reason=common_pb2.FINISH_REASON_STOP,
            status=metering_pb2.GENERATION_STATUS_COMPLETED,
            streamed=True,
        )
        out.create_time.GetCurrentTime()
        return out

    forged, honest = event(1000), event(1)
    async with stack.channel("metering", bearer="", as_="router") as channel:
        as_router = metering_pb2_grpc.MeteringServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await as_router.RecordUsage(metering_pb2.RecordUsageRequest(events=[forged]))
        await as_router.RecordUsage(metering_pb2.RecordUsageRequest(events=[honest]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.extend(violation.field for violation in bad.field_violations)
    assert fields == ["events[0].cost_usd"]
    assert (await in_ledger(metering, honest.generation_id)).cost_usd == honest.cost_usd
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        request = metering_pb2.GetGenerationRequest(generation_id=forged.generation_id)
        await metering.GetGeneration(request)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
