"""ImportCatalog over a real channel against a real, seeded Postgres (its own database)."""

from __future__ import annotations

from datetime import date

import asyncpg
import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard_catalog.importer import CatalogImporter
from switchboard_catalog.importer_source import read_genai_prices, selected_rows
from switchboard_catalog.store import CatalogStore
from switchboard_core.db import create_pool
from tests.secure import admin_key, operator_channel, secure_catalog

Kind = catalog_pb2.CatalogChange.Kind
PROVIDERS = ["openai", "anthropic", "google", "deepseek"]


async def _fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _request(dry_run: bool, providers: list[str] = PROVIDERS) -> catalog_pb2.ImportCatalogRequest:
    return catalog_pb2.ImportCatalogRequest(
        source="genai-prices", dry_run=dry_run, provider_ids=providers
    )


async def test_dry_run_then_apply_then_reapply_changes_nothing(own_database_url: str) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        stub = catalog.stub
        models_before = await _fetch(own_database_url, "SELECT id FROM models")
        version = (await _fetch(own_database_url, "SELECT version FROM catalog_version"))[0][0]

        dry = await stub.ImportCatalog(_request(dry_run=True))
        assert not dry.applied and dry.changes
        assert dry.source_version.startswith("0.2.")
        assert dry.catalog_version == version
        assert await _fetch(own_database_url, "SELECT id FROM models") == models_before
        assert not await _fetch(own_database_url, "SELECT * FROM catalog_imports")
        kinds = {change.kind for change in dry.changes}
        assert {Kind.KIND_NEW_MODEL, Kind.KIND_NEW_ENDPOINT, Kind.KIND_PRICE_CHANGE} <= kinds
        # The seed's endpoints are matched by upstream model, not duplicated.
        new_ids = {c.id for c in dry.changes if c.kind == Kind.KIND_NEW_ENDPOINT}
        assert "anthropic:anthropic/claude-haiku-4.5" not in new_ids
        assert "openai:openai/gpt-4o-mini" not in new_ids
        assert "google:google/gemini-2.5-pro" not in new_ids

        applied = await stub.ImportCatalog(_request(dry_run=False))
        assert applied.applied and applied.catalog_version == version + 1
        assert [c.id for c in applied.changes] == [c.id for c in dry.changes]
        (record,) = await _fetch(own_database_url, "SELECT * FROM catalog_imports")
        assert record["catalog_version"] == version + 1
        assert record["source_version"] == applied.source_version
        # The demo model stays.
        assert await _fetch(own_database_url, "SELECT 1 FROM models WHERE id = 'switchboard/demo'")
        tracked = await _fetch(own_database_url, "SELECT * FROM catalog_import_endpoints")
        assert {"anthropic:anthropic/claude-haiku-4.5", "google:google/gemini-2.5-pro"} <= {
            row["endpoint_id"] for row in tracked
        }

        again = await stub.ImportCatalog(_request(dry_run=False))
        assert again.applied and list(again.changes) == []
        assert again.catalog_version == version + 1

        # Every default provider, twice: the second changes nothing either (endpoints the
        # first created are found again, not reported as dropped).
        everything = await stub.ImportCatalog(_request(dry_run=False, providers=[]))
        assert everything.changes and everything.catalog_version == version + 2
        assert not [c for c in everything.changes if c.kind == Kind.KIND_REMOVED_FROM_SOURCE]
        once_more = await stub.ImportCatalog(_request(dry_run=False, providers=[]))
        assert list(once_more.changes) == [] and once_more.catalog_version == version + 2


async def test_a_changed_price_is_reported_with_before_and_after_and_kept_in_history(
    own_database_url: str,
) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        stub = catalog.stub
        await stub.ImportCatalog(_request(dry_run=False))
        endpoint = (
            await stub.GetModel(catalog_pb2.GetModelRequest(model_id="openai/gpt-4o-mini"))
        ).model.endpoints[0]
        endpoint.pricing.prompt_usd_per_mtok = "0.2"
        endpoint.ClearField("price_version")
        await stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))

        dry = await stub.ImportCatalog(_request(dry_run=True))
        assert [(c.kind, c.id, c.detail) for c in dry.changes] == [
            (Kind.KIND_PRICE_CHANGE, "openai:openai/gpt-4o-mini", "prompt 0.2 -> 0.15")
        ]
        applied = await stub.ImportCatalog(_request(dry_run=False))
        assert [c.detail for c in applied.changes] == ["prompt 0.2 -> 0.15"]
        history = await _fetch(
            own_database_url,
            "SELECT prompt_price FROM endpoint_prices WHERE endpoint_id = $1"
            " ORDER BY effective_at, id",
            "openai:openai/gpt-4o-mini",
        )
        assert [str(row["prompt_price"].normalize()) for row in history][-2:] == ["0.2", "0.15"]


async def test_an_endpoint_the_source_drops_is_reported_once(own_database_url: str) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60):
        pool = await create_pool(own_database_url, min_size=1, max_size=2)
        try:
            importer = CatalogImporter(CatalogStore(pool), pool)
            today = date(2026, 11, 30)
            rows = selected_rows(["groq"])
            await importer.run(dry_run=False, provider_ids=["groq"], today=today)
            source = read_genai_prices(today, rows)
            dropped = source.models.pop(0)
            first = await importer.run(dry_run=False, today=today, source=source)
            removed = [c for c in first.changes if c.kind == Kind.KIND_REMOVED_FROM_SOURCE]
            assert [c.id for c in removed] == [dropped.endpoint.id]
            second = await importer.run(dry_run=False, today=today, source=source)
            assert list(second.changes) == []
        finally:
            await pool.close()


async def test_import_needs_catalog_write(own_database_url: str) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        key = await admin_key(own_database_url, ("catalog:read",))
        channel = operator_channel(catalog.address, key)
        try:
            call = channel.unary_unary(
                "/switchboard.catalog.v1.CatalogService/ImportCatalog",
                request_serializer=catalog_pb2.ImportCatalogRequest.SerializeToString,
                response_deserializer=catalog_pb2.ImportCatalogResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(_request(dry_run=True))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await channel.close(None)


async def test_import_refuses_unknown_providers_and_too_many(own_database_url: str) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        for ids in (["aws"], ["Not An Id"], ["openai"] * 101):
            request = catalog_pb2.ImportCatalogRequest(
                source="genai-prices", dry_run=True, provider_ids=ids
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await catalog.stub.ImportCatalog(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await catalog.stub.ImportCatalog(catalog_pb2.ImportCatalogRequest(source="litellm"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
