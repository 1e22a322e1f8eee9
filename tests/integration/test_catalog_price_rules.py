"""Full price sheets, price versions and lifecycle dates through the catalog's RPCs, its
store and its history table (migration 0004)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog.testing import RunningCatalog
from tests.secure import secure_catalog

TIMEOUT = 5.0


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    async with secure_catalog(
        database_url, as_service="metering", version_poll_seconds=60
    ) as running:
        yield running


def _time(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    return stamp


def _sheet(long_prompt: str = "2.5") -> common_pb2.Pricing:
    """Every kind of rule: all rates, a tier and a window past midnight."""
    return common_pb2.Pricing(
        prompt_usd_per_mtok="1.25",
        completion_usd_per_mtok="10",
        cached_prompt_usd_per_mtok="0.125",
        cache_write_usd_per_mtok="1.5625",
        cache_write_1h_usd_per_mtok="2.5",
        audio_prompt_usd_per_mtok="1",
        image_prompt_usd_per_mtok="1.3",
        video_prompt_usd_per_mtok="1.4",
        cached_audio_usd_per_mtok="0.1",
        audio_completion_usd_per_mtok="12",
        reasoning_usd_per_mtok="11",
        request_usd="0.000123456789",
        image_usd="0.0025",
        web_search_usd="0.035",
        tiers=[
            common_pb2.PriceTier(
                prompt_tokens_above=200_000,
                pricing=common_pb2.Pricing(
                    prompt_usd_per_mtok=long_prompt,
                    completion_usd_per_mtok="15",
                    cached_prompt_usd_per_mtok="0.25",
                ),
            )
        ],
        windows=[
            common_pb2.PriceWindow(
                start_utc="16:30",
                end_utc="00:30",
                pricing=common_pb2.Pricing(
                    prompt_usd_per_mtok="0.625", completion_usd_per_mtok="5"
                ),
            )
        ],
    )


async def _entries(catalog: RunningCatalog) -> tuple[catalog_pb2.Model, catalog_pb2.Endpoint]:
    suffix = uuid.uuid4().hex[:10]
    provider = catalog_pb2.Provider(
        id=f"pr-{suffix}",
        display_name="Price rules test",
        api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
        base_url="https://llm.example.com/v1",
    )
    model = catalog_pb2.Model(
        id=f"sbtest/rules-{suffix}",
        display_name="Price rules model",
        context_length=1_000_000,
        input_modalities=["text", "audio"],
        output_modalities=["text"],
    )
    await catalog.stub.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
    await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    endpoint = catalog_pb2.Endpoint(
        model_id=model.id,
        provider_id=provider.id,
        upstream_model="rules",
        pricing=_sheet(),
        context_length=1_000_000,
    )
    return model, endpoint


async def _upsert(catalog: RunningCatalog, endpoint: catalog_pb2.Endpoint) -> catalog_pb2.Endpoint:
    response = await catalog.stub.UpsertEndpoint(
        catalog_pb2.UpsertEndpointRequest(endpoint=endpoint)
    )
    return response.endpoint


async def _history_rows(database_url: str, endpoint_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT id, price_rules FROM endpoint_prices WHERE endpoint_id = $1 ORDER BY id",
                endpoint_id,
            )
        )
    finally:
        await conn.close()


async def _history(catalog: RunningCatalog, endpoint_id: str) -> list[catalog_pb2.PriceChange]:
    stream = catalog.stub.WatchCatalog(catalog_pb2.WatchCatalogRequest(include_price_history=True))
    try:
        async with asyncio.timeout(TIMEOUT):
            snapshot = await stream.read()
    finally:
        stream.cancel()
    assert isinstance(snapshot, catalog_pb2.WatchCatalogResponse)
    [history] = [h for h in snapshot.price_history if h.endpoint_id == endpoint_id]
    return list(history.changes)


async def test_every_rule_round_trips_exactly(catalog: RunningCatalog) -> None:
    _, endpoint = await _entries(catalog)
    stored = await _upsert(catalog, endpoint)
    assert stored.pricing == _sheet()
    assert stored.price_version > 0
    [change] = await _history(catalog, stored.id)
    assert change.pricing == _sheet()
    assert change.price_version == stored.price_version


async def test_history_records_a_tier_change_and_not_a_rewrite(
    catalog: RunningCatalog, database_url: str
) -> None:
    _, endpoint = await _entries(catalog)
    first = await _upsert(catalog, endpoint)
    # The same sheet written differently ("2.50" for "2.5"): no change, no new version.
    endpoint.pricing.tiers[0].pricing.prompt_usd_per_mtok = "2.50"
    same = await _upsert(catalog, endpoint)
    assert same.price_version == first.price_version
    assert len(await _history_rows(database_url, first.id)) == 1
    # Only the tier's prompt rate changes: a new history row and a new version.
    endpoint.pricing.CopyFrom(_sheet(long_prompt="3"))
    changed = await _upsert(catalog, endpoint)
    assert changed.price_version > first.price_version
    assert changed.pricing.tiers[0].pricing.prompt_usd_per_mtok == "3"
    rows = await _history_rows(database_url, first.id)
    assert [row["id"] for row in rows] == [first.price_version, changed.price_version]
    changes = await _history(catalog, first.id)
    assert [c.price_version for c in changes] == [first.price_version, changed.price_version]
    assert changes[0].pricing == _sheet()
    assert changes[1].pricing == _sheet(long_prompt="3")
    # A window change alone is a change too.
    endpoint.pricing.windows[0].end_utc = "01:00"
    windowed = await _upsert(catalog, endpoint)
    assert windowed.price_version > changed.price_version


async def test_lifecycle_round_trips(catalog: RunningCatalog) -> None:
    model, endpoint = await _entries(catalog)
    successor = catalog_pb2.Model()
    successor.CopyFrom(model)
    successor.id = model.id + "-next"
    await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=successor))
    model.deprecation_time.CopyFrom(_time("2026-04-22T00:00:00Z"))
    model.retirement_time.CopyFrom(_time("2026-10-23T12:30:00Z"))
    model.successor_model_id = successor.id
    stored = (await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert stored.deprecation_time == model.deprecation_time
    assert stored.retirement_time == model.retirement_time
    assert stored.successor_model_id == successor.id
    endpoint.retirement_time.CopyFrom(_time("2026-10-23T00:00:00Z"))
    saved = await _upsert(catalog, endpoint)
    assert saved.retirement_time == endpoint.retirement_time
    assert not saved.HasField("deprecation_time")
    fetched = (await catalog.stub.GetModel(catalog_pb2.GetModelRequest(model_id=model.id))).model
    assert fetched.successor_model_id == successor.id
    assert list(fetched.endpoints) == [saved]
    # Announcements can be withdrawn: unset is NULL again.
    model.ClearField("retirement_time")
    model.ClearField("deprecation_time")
    model.successor_model_id = ""
    cleared = (await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))).model
    assert not cleared.HasField("retirement_time") and not cleared.successor_model_id


def _violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


async def test_bad_rules_and_dates_are_named(catalog: RunningCatalog) -> None:
    model, endpoint = await _entries(catalog)
    endpoint.pricing.audio_prompt_usd_per_mtok = "-1"
    endpoint.pricing.tiers[0].pricing.completion_usd_per_mtok = "9"  # below the base 10
    endpoint.pricing.windows[0].start_utc = "25:00"
    endpoint.deprecation_time.CopyFrom(_time("2026-05-01T00:00:00Z"))
    endpoint.retirement_time.CopyFrom(_time("2026-04-01T00:00:00Z"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _upsert(catalog, endpoint)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = set(_violations(caught.value))
    assert {
        "endpoint.pricing.audio_prompt_usd_per_mtok",
        "endpoint.pricing.windows[0].start_utc",
        "endpoint.retirement_time",
    } <= fields
    endpoint.CopyFrom(endpoint)
    endpoint.pricing.audio_prompt_usd_per_mtok = "1"
    endpoint.pricing.windows[0].start_utc = "16:30"
    endpoint.ClearField("retirement_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _upsert(catalog, endpoint)
    assert set(_violations(caught.value)) == {
        "endpoint.pricing.tiers[0].pricing.completion_usd_per_mtok"
    }
    model.successor_model_id = model.id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    assert "model.successor_model_id" in _violations(caught.value)
