"""Stall limits in the catalog (``StallLimits`` on models and endpoints), over a real channel
and a real Postgres: they round-trip through the upserts, GetModel and WatchCatalog, the
router resolves them into its routes, bad values are refused naming the field, and the seed
gives the silent reasoning models longer limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog.config import packaged_seed_path
from switchboard_catalog.seed import load_seed
from switchboard_catalog.testing import RunningCatalog
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.catalog_cache import Snapshot
from switchboard_router.providers.base import StallLimits
from tests.secure import secure_catalog


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    async with secure_catalog(
        database_url, as_service="router", version_poll_seconds=60
    ) as running:
        yield running


def entries() -> tuple[catalog_pb2.Provider, catalog_pb2.Model, catalog_pb2.Endpoint]:
    suffix = uuid.uuid4().hex[:10]
    provider = catalog_pb2.Provider(
        id=f"p-{suffix}",
        display_name="Stall test provider",
        api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
        base_url="https://llm.example.com/v1",
    )
    model = catalog_pb2.Model(
        id=f"sbtest/thinker-{suffix}",
        display_name="Slow thinker",
        context_length=4096,
        input_modalities=["text"],
        output_modalities=["text"],
        stall_limits=catalog_pb2.StallLimits(first_byte_ms=120_000),
    )
    endpoint = catalog_pb2.Endpoint(
        model_id=model.id,
        provider_id=provider.id,
        upstream_model="m",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2"),
        context_length=4096,
        stall_limits=catalog_pb2.StallLimits(idle_ms=45_000),
    )
    return provider, model, endpoint


async def version(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT version FROM catalog_version"))
    finally:
        await conn.close()


async def watched(catalog: RunningCatalog, model_id: str) -> catalog_pb2.WatchCatalogResponse:
    """The first watch snapshot that has ``model_id`` with an endpoint."""
    stream = catalog.stub.WatchCatalog(catalog_pb2.WatchCatalogRequest())
    try:
        async with asyncio.timeout(10):
            while True:
                message = await stream.read()
                assert isinstance(message, catalog_pb2.WatchCatalogResponse)
                if any(m.id == model_id and m.endpoints for m in message.models):
                    return message
    finally:
        stream.cancel()


async def test_stall_limits_round_trip_through_the_rpcs_and_the_watch(
    catalog: RunningCatalog, database_url: str
) -> None:
    provider, model, endpoint = entries()
    stub = catalog.stub
    await stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    stored_model = (await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert stored_model.stall_limits == model.stall_limits
    request = catalog_pb2.UpsertEndpointRequest(endpoint=endpoint)
    stored = (await stub.UpsertEndpoint(request)).endpoint
    assert stored.stall_limits == endpoint.stall_limits
    fetched = (await stub.GetModel(catalog_pb2.GetModelRequest(model_id=model.id))).model
    assert fetched.stall_limits.first_byte_ms == 120_000
    assert list(fetched.endpoints) == [stored]

    message = await watched(catalog, model.id)
    sent = next(m for m in message.models if m.id == model.id)
    assert sent.stall_limits == model.stall_limits
    assert sent.endpoints[0].stall_limits == endpoint.stall_limits
    # The router resolves them once, into the route: the model's first-byte limit, the
    # endpoint's idle limit.
    routes = Snapshot.from_proto(message, stall=StallLimits(15, 30)).routes[model.id]
    assert [r.stall for r in routes] == [StallLimits(120.0, 45.0)]

    # The same again changes nothing; a new limit alone is a change, and no price change.
    before = await version(database_url)
    await stub.UpsertEndpoint(request)
    assert await version(database_url) == before
    request.endpoint.stall_limits.idle_ms = 0  # back to inheriting
    changed = (await stub.UpsertEndpoint(request)).endpoint
    assert await version(database_url) == before + 1
    assert not changed.HasField("stall_limits")
    assert changed.price_version == stored.price_version


def details(error: grpc.aio.AioRpcError) -> tuple[dict[str, str], str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    violations: dict[str, str] = {}
    reason = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return violations, reason


@pytest.mark.parametrize("value", [1, 99, 3_600_001])
async def test_bad_stall_limits_are_refused_naming_the_field(
    catalog: RunningCatalog, value: int
) -> None:
    _, model, endpoint = entries()
    model.stall_limits.first_byte_ms = value
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = details(caught.value)
    assert list(violations) == ["model.stall_limits.first_byte_ms"]
    assert "3600000" in violations["model.stall_limits.first_byte_ms"]

    endpoint.stall_limits.idle_ms = value
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = details(caught.value)
    assert "endpoint.stall_limits.idle_ms" in violations


def test_the_seed_gives_silent_reasoning_models_longer_limits() -> None:
    seed = load_seed(packaged_seed_path(), policy=UpstreamPolicy(["127.0.0.1"]))
    limits = {m.id: m.stall_limits for m in seed.entries.models}
    for thinker in ("openai/o4-mini", "openai/gpt-5.6-sol", "google/gemini-2.5-pro"):
        assert limits[thinker].first_byte_ms >= 60_000, thinker
    for streamer in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4.5", "deepseek/deepseek-r1"):
        assert not limits[streamer].first_byte_ms, streamer  # they keep the router's defaults
