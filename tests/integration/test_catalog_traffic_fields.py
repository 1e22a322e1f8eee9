"""The catalog's traffic control fields (an endpoint's ``capacity`` and ``data_policy``, a model's
``hedge``) over a real channel and a real Postgres: they round-trip through the upserts,
GetModel, ListModels and WatchCatalog, the router's snapshot carries them, ``Endpoint.stats``
is ignored on writes and never stored, and bad values are refused naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog.testing import RunningCatalog
from switchboard_router.catalog_cache import Capacity, Snapshot
from tests.integration.test_catalog_stall_limits import details, version, watched
from tests.integration.test_catalog_stall_limits import entries as stall_entries
from tests.secure import secure_catalog

Hedging = common_pb2.Hedging


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    async with secure_catalog(
        database_url, as_service="router", version_poll_seconds=60
    ) as running:
        yield running


def entries() -> tuple[catalog_pb2.Provider, catalog_pb2.Model, catalog_pb2.Endpoint]:
    """A fresh provider, model and endpoint (the stall-limit tests' entries) carrying the
    traffic fields instead of stall limits."""
    provider, model, endpoint = stall_entries()
    model.ClearField("stall_limits")
    model.hedge.CopyFrom(Hedging(mode=Hedging.MODE_LIVE_TTFT, delay_ms=1500, ttft_percentile=95))
    endpoint.ClearField("stall_limits")
    endpoint.quantization = "fp8"
    endpoint.capacity.CopyFrom(
        catalog_pb2.EndpointCapacity(max_concurrent=40, requests_per_minute=600)
    )
    endpoint.data_policy.CopyFrom(catalog_pb2.DataPolicy(zero_data_retention=True))
    return provider, model, endpoint


async def test_the_fields_round_trip_through_the_rpcs_and_the_watch(
    catalog: RunningCatalog, database_url: str
) -> None:
    provider, model, endpoint = entries()
    stub = catalog.stub
    await stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    stored_model = (await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert stored_model.hedge == model.hedge
    request = catalog_pb2.UpsertEndpointRequest(endpoint=endpoint)
    stored = (await stub.UpsertEndpoint(request)).endpoint
    assert stored.capacity == endpoint.capacity
    assert stored.data_policy == endpoint.data_policy
    assert stored.HasField("capacity") and stored.HasField("data_policy")

    fetched = (await stub.GetModel(catalog_pb2.GetModelRequest(model_id=model.id))).model
    assert fetched.hedge == model.hedge
    assert list(fetched.endpoints) == [stored]
    listed = await stub.ListModels(
        catalog_pb2.ListModelsRequest(provider_id=provider.id, page_size=10)
    )
    assert [m.id for m in listed.models] == [model.id]
    assert listed.models[0].hedge == model.hedge
    assert listed.models[0].endpoints[0].capacity.requests_per_minute == 600

    message = await watched(catalog, model.id)
    sent = next(m for m in message.models if m.id == model.id)
    assert sent.hedge == model.hedge
    assert sent.endpoints[0].capacity == endpoint.capacity
    assert sent.endpoints[0].data_policy == endpoint.data_policy
    # The router's snapshot carries what routing and the endpoint gate need.
    (route,) = Snapshot.from_proto(message).routes[model.id]
    assert route.capacity == Capacity(max_concurrent=40, requests_per_minute=600)
    assert (route.zero_data_retention, route.retains_prompts) == (True, False)
    assert route.quantization == "fp8"

    # The same again changes nothing; each field alone is a change and no price change.
    before = await version(database_url)
    await stub.UpsertEndpoint(request)
    await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    assert await version(database_url) == before
    request.endpoint.capacity.max_concurrent = 0
    request.endpoint.data_policy.zero_data_retention = False
    request.endpoint.data_policy.retains_prompts = True
    changed = (await stub.UpsertEndpoint(request)).endpoint
    assert await version(database_url) == before + 1
    assert changed.capacity == catalog_pb2.EndpointCapacity(requests_per_minute=600)
    assert changed.data_policy == catalog_pb2.DataPolicy(retains_prompts=True)
    assert changed.price_version == stored.price_version
    model.hedge.Clear()  # back to inheriting the router's
    unhedged = (await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert not unhedged.HasField("hedge")
    assert await version(database_url) == before + 2
    model.hedge.mode = Hedging.MODE_OFF
    off = (await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert off.hedge == Hedging(mode=Hedging.MODE_OFF)


async def test_stats_are_output_only_ignored_on_writes(
    catalog: RunningCatalog, database_url: str
) -> None:
    provider, model, endpoint = entries()
    stub = catalog.stub
    await stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    request = catalog_pb2.UpsertEndpointRequest(endpoint=endpoint)
    await stub.UpsertEndpoint(request)
    before = await version(database_url)
    request.endpoint.stats.CopyFrom(
        catalog_pb2.EndpointStats(
            window_seconds=300, requests=99, ttft_p50_ms=4_294_967_295, uptime=7.0, breaker="open"
        )
    )
    stored = (await stub.UpsertEndpoint(request)).endpoint
    assert not stored.HasField("stats")
    assert await version(database_url) == before  # nothing of it was stored: no change
    fetched = (await stub.GetModel(catalog_pb2.GetModelRequest(model_id=model.id))).model
    assert not fetched.endpoints[0].HasField("stats")


async def test_entries_written_without_the_fields_read_back_unset(
    catalog: RunningCatalog, database_url: str
) -> None:
    """An endpoint and model written without the fields (as the importer and older writers
    do) read back without them: no cap, no known policy, hedging inherited."""
    provider, model, endpoint = entries()
    model.ClearField("hedge")
    endpoint.ClearField("capacity")
    endpoint.ClearField("data_policy")
    stub = catalog.stub
    await stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    assert not (await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model.HasField(
        "hedge"
    )
    stored = (
        await stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    ).endpoint
    assert not stored.HasField("capacity") and not stored.HasField("data_policy")


async def test_the_database_holds_the_same_bounds(
    catalog: RunningCatalog, database_url: str
) -> None:
    """A writer that bypasses the RPC (a script, a newer replica with a bug) cannot store
    what the RPC refuses: migration 0008 repeats the bounds."""
    provider, model, endpoint = entries()
    stub = catalog.stub
    await stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    stored = (
        await stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    ).endpoint
    conn = await asyncpg.connect(database_url)
    try:
        for statement in (
            "UPDATE endpoints SET max_concurrent = 100001 WHERE id = $1",
            "UPDATE endpoints SET requests_per_minute = -1 WHERE id = $1",
            "UPDATE endpoints SET retains_prompts = true WHERE id = $1",  # it is ZDR
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(statement, stored.id)
        for statement in (
            "UPDATE models SET hedge_mode = 'sometimes' WHERE id = $1",
            "UPDATE models SET hedge_ttft_percentile = 100 WHERE id = $1",
            "UPDATE models SET hedge_mode = 'fixed_delay', hedge_delay_ms = 0 WHERE id = $1",
            "UPDATE models SET hedge_mode = 'off', hedge_delay_ms = 100 WHERE id = $1",
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(statement, model.id)
    finally:
        await conn.close()


async def refused(call: object) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = details(caught.value)
    return violations


async def test_bad_capacity_and_data_policy_are_refused_naming_the_field(
    catalog: RunningCatalog,
) -> None:
    _, _, endpoint = entries()
    endpoint.capacity.max_concurrent = 100_001
    endpoint.capacity.requests_per_minute = 1_000_001
    endpoint.data_policy.retains_prompts = True
    violations = await refused(
        catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    )
    assert "100,000" in violations["endpoint.capacity.max_concurrent"]
    assert "1,000,000" in violations["endpoint.capacity.requests_per_minute"]
    assert "retains_prompts" in violations["endpoint.data_policy.zero_data_retention"]


@pytest.mark.parametrize(
    ("hedge", "field"),
    [
        (Hedging(mode=Hedging.MODE_FIXED_DELAY), "model.hedge.delay_ms"),
        (Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=9), "model.hedge.delay_ms"),
        (Hedging(mode=Hedging.MODE_LIVE_TTFT, delay_ms=60_001), "model.hedge.delay_ms"),
        (Hedging(mode=Hedging.MODE_LIVE_TTFT, ttft_percentile=49), "model.hedge.ttft_percentile"),
        (Hedging(mode=Hedging.MODE_LIVE_TTFT, ttft_percentile=100), "model.hedge.ttft_percentile"),
        (
            Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=100, ttft_percentile=90),
            "model.hedge.ttft_percentile",
        ),
        (Hedging(mode=Hedging.MODE_OFF, delay_ms=100), "model.hedge.delay_ms"),
        (Hedging(mode=7), "model.hedge.mode"),  # type: ignore[arg-type]
    ],
)
async def test_bad_hedging_is_refused_naming_the_field(
    catalog: RunningCatalog, hedge: common_pb2.Hedging, field: str
) -> None:
    _, model, _ = entries()
    model.hedge.CopyFrom(hedge)
    violations = await refused(
        catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    )
    assert list(violations) == [field]


async def test_the_price_import_adds_entries_unset_and_keeps_what_operators_set(
    own_database_url: str,
) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as running:
        stub = running.stub
        request = catalog_pb2.ImportCatalogRequest(
            source="genai-prices", dry_run=False, provider_ids=["openai"]
        )
        await stub.ImportCatalog(request)
        model = (
            await stub.GetModel(catalog_pb2.GetModelRequest(model_id="openai/gpt-4o-mini"))
        ).model
        endpoint = model.endpoints[0]
        assert not endpoint.HasField("capacity") and not endpoint.HasField("data_policy")
        # An operator sets caps and a policy, and a price the import will correct.
        endpoint.capacity.max_concurrent = 25
        endpoint.data_policy.retains_prompts = True
        endpoint.pricing.prompt_usd_per_mtok = "0.2"
        endpoint.ClearField("price_version")
        await stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
        model.ClearField("endpoints")
        model.ClearField("update_time")
        model.hedge.CopyFrom(Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=800))
        await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))

        applied = await stub.ImportCatalog(request)
        assert [c.detail for c in applied.changes] == ["prompt 0.2 -> 0.15"]
        after = (
            await stub.GetModel(catalog_pb2.GetModelRequest(model_id="openai/gpt-4o-mini"))
        ).model
        assert after.endpoints[0].pricing.prompt_usd_per_mtok == "0.15"
        assert after.endpoints[0].capacity == catalog_pb2.EndpointCapacity(max_concurrent=25)
        assert after.endpoints[0].data_policy == catalog_pb2.DataPolicy(retains_prompts=True)
        assert after.hedge == Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=800)
