"""Catalog unary RPCs over a real channel, against a real (seeded) Postgres."""

from __future__ import annotations

import math
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
from switchboard_catalog.seed import apply_seed, load_seed
from switchboard_catalog.store import CatalogStore
from switchboard_catalog.testing import RunningCatalog
from switchboard_core.db import create_pool
from switchboard_core.upstreams import UpstreamPolicy
from tests.secure import secure_catalog

# The seeded demo provider's host.
DEMO_HOST = UpstreamPolicy(["127.0.0.1"])


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    async with secure_catalog(database_url, version_poll_seconds=60) as running:
        yield running


def _suffix() -> str:
    return uuid.uuid4().hex[:10]


def _details(error: grpc.aio.AioRpcError) -> tuple[dict[str, str], error_details_pb2.ErrorInfo]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    violations: dict[str, str] = {}
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
    return violations, info


async def _db_fetch(database_url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def _version(database_url: str) -> int:
    rows = await _db_fetch(database_url, "SELECT version FROM catalog_version")
    return int(rows[0]["version"])


async def test_list_models_pages_walk_every_model_once(
    catalog: RunningCatalog, database_url: str
) -> None:
    expected = [r["id"] for r in await _db_fetch(database_url, "SELECT id FROM models")]
    seen: list[str] = []
    token, pages = "", 0
    while True:
        response = await catalog.stub.ListModels(
            catalog_pb2.ListModelsRequest(page_size=4, page_token=token)
        )
        assert len(response.models) <= 4
        seen += [model.id for model in response.models]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert seen == sorted(expected)
    assert pages == math.ceil(len(expected) / 4)
    seeded = {
        model.id for model in load_seed(packaged_seed_path(), policy=DEMO_HOST).entries.models
    }
    assert seeded <= set(seen)


async def test_list_models_by_provider_includes_all_endpoints(catalog: RunningCatalog) -> None:
    response = await catalog.stub.ListModels(catalog_pb2.ListModelsRequest(provider_id="groq"))
    ids = [model.id for model in response.models]
    assert ids == ["meta-llama/llama-3.1-8b-instruct", "meta-llama/llama-3.3-70b-instruct"]
    hosts = {endpoint.provider_id for endpoint in response.models[1].endpoints}
    assert {"together", "groq", "fireworks", "deepinfra"} <= hosts
    assert response.next_page_token == ""


async def test_get_model_with_prices(catalog: RunningCatalog) -> None:
    response = await catalog.stub.GetModel(
        catalog_pb2.GetModelRequest(model_id="anthropic/claude-sonnet-4")
    )
    model = response.model
    assert model.context_length == 200000
    assert model.HasField("update_time")
    [endpoint] = model.endpoints
    assert endpoint.id == "anthropic:anthropic/claude-sonnet-4"
    assert endpoint.pricing == common_pb2.Pricing(
        prompt_usd_per_mtok="3",
        completion_usd_per_mtok="15",
        cached_prompt_usd_per_mtok="0.3",
        cache_write_usd_per_mtok="3.75",
        cache_write_1h_usd_per_mtok="6",
        web_search_usd="0.01",
    )
    assert endpoint.status == catalog_pb2.ENDPOINT_STATUS_ACTIVE
    assert endpoint.price_version > 0
    # Retired 2026-06-15 (Anthropic's release notes); successor named by Anthropic.
    assert model.retirement_time.ToJsonString() == "2026-06-15T00:00:00Z"
    assert endpoint.retirement_time == model.retirement_time
    assert not model.HasField("deprecation_time")
    assert model.successor_model_id == "anthropic/claude-sonnet-4.6"


async def test_get_model_not_found_names_the_id(catalog: RunningCatalog) -> None:
    missing = f"sbtest/missing-{_suffix()}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.GetModel(catalog_pb2.GetModelRequest(model_id=missing))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing in (caught.value.details() or "")
    _, info = _details(caught.value)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["model_id"] == missing


async def test_list_models_rejects_bad_paging(catalog: RunningCatalog) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.ListModels(
            catalog_pb2.ListModelsRequest(page_size=-1, page_token="a", provider_id="Bad!")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = _details(caught.value)
    assert set(violations) == {"page_size", "page_token", "provider_id"}


async def test_upsert_provider_names_every_bad_field(catalog: RunningCatalog) -> None:
    provider = catalog_pb2.Provider(id="Not OK", base_url="ftp://example.com")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, info = _details(caught.value)
    assert set(violations) == {
        "provider.id",
        "provider.display_name",
        "provider.api_format",
        "provider.base_url",
    }
    assert info.reason == "INVALID_ARGUMENT"


async def test_upsert_endpoint_names_bad_fields(catalog: RunningCatalog) -> None:
    endpoint = catalog_pb2.Endpoint(
        id="openai:openai/gpt-4o-mini",
        model_id="openai/gpt-4o",
        provider_id="openai",
        upstream_model="gpt-4o",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1e3", completion_usd_per_mtok="10"),
        context_length=128000,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    violations, _ = _details(caught.value)
    assert set(violations) == {"endpoint.id", "endpoint.pricing.prompt_usd_per_mtok"}


async def test_upsert_endpoint_needs_its_model_and_provider(catalog: RunningCatalog) -> None:
    suffix = _suffix()
    endpoint = catalog_pb2.Endpoint(
        model_id=f"sbtest/nothing-{suffix}",
        provider_id=f"nobody-{suffix}",
        upstream_model="x",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="1"),
        context_length=1000,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    _, info = _details(caught.value)
    assert dict(info.metadata) == {
        "model_id": endpoint.model_id,
        "provider_id": endpoint.provider_id,
    }


async def test_upserts_round_trip_and_bump_the_version_only_on_change(
    catalog: RunningCatalog, database_url: str
) -> None:
    suffix = _suffix()
    provider = catalog_pb2.Provider(
        id=f"p-{suffix}",
        display_name="Test provider",
        api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
        base_url="https://llm.example.com/v1",
    )
    model = catalog_pb2.Model(
        id=f"sbtest/m-{suffix}",
        display_name="Test model",
        context_length=4096,
        input_modalities=["text"],
        output_modalities=["text"],
    )
    endpoint = catalog_pb2.Endpoint(
        model_id=model.id,
        provider_id=provider.id,
        upstream_model="m",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1.50", completion_usd_per_mtok="2"),
        context_length=4096,
        supported_parameters=["temperature"],
    )
    stub = catalog.stub
    before = await _version(database_url)
    stored_provider = await stub.UpsertProvider(
        catalog_pb2.UpsertProviderRequest(provider=provider)
    )
    assert stored_provider.provider == provider
    stored_model = (await stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert stored_model.id == model.id and stored_model.HasField("update_time")
    request = catalog_pb2.UpsertEndpointRequest(endpoint=endpoint)
    stored = (await stub.UpsertEndpoint(request)).endpoint
    assert stored.id == f"{provider.id}:{model.id}"
    assert stored.pricing.prompt_usd_per_mtok == "1.5"
    assert stored.status == catalog_pb2.ENDPOINT_STATUS_ACTIVE
    assert await _version(database_url) == before + 3

    await stub.UpsertEndpoint(request)  # the same again: nothing changes
    assert await _version(database_url) == before + 3
    fetched = await stub.GetModel(catalog_pb2.GetModelRequest(model_id=model.id))
    assert list(fetched.model.endpoints) == [stored]
    providers = await stub.ListProviders(catalog_pb2.ListProvidersRequest())
    assert provider in providers.providers


async def test_seeding_again_changes_nothing(catalog: RunningCatalog, database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        seed = load_seed(packaged_seed_path(), policy=DEMO_HOST)
        assert await apply_seed(CatalogStore(pool), seed) is None
    finally:
        await pool.close()
