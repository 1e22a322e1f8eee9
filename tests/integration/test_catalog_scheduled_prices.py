"""Scheduled prices (Endpoint.scheduled_prices): stored, served, validated over the wire, and
applied at their time, exactly once, with history effective at the scheduled time; the
genai-prices import schedules its dated prices. Real Postgres, each test its own database."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from genai_prices.data import providers as bundled
from genai_prices.types import StartDateConstraint
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_catalog.importer import CatalogImporter
from switchboard_catalog.importer_source import read_genai_prices, selected_rows
from switchboard_catalog.scheduler import PriceScheduler
from switchboard_catalog.store import CatalogStore
from switchboard_core.db import create_pool
from tests.secure import secure_catalog

ENDPOINT = "openai:openai/gpt-4o-mini"
MODEL = "openai/gpt-4o-mini"
ARGON = "google:google/gemini-4-argon"


async def _fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _pricing(prompt: str, completion: str) -> common_pb2.Pricing:
    return common_pb2.Pricing(prompt_usd_per_mtok=prompt, completion_usd_per_mtok=completion)


def _change(at: datetime, prompt: str, completion: str) -> catalog_pb2.PriceChange:
    change = catalog_pb2.PriceChange(pricing=_pricing(prompt, completion))
    change.effective_time.FromDatetime(at)
    return change


async def _endpoint(stub: Any, model_id: str = MODEL) -> catalog_pb2.Endpoint:
    model = (await stub.GetModel(catalog_pb2.GetModelRequest(model_id=model_id))).model
    (endpoint,) = [e for e in model.endpoints if e.model_id == model_id]
    return endpoint  # type: ignore[no-any-return]


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


async def _version(database_url: str) -> int:
    return int((await _fetch(database_url, "SELECT version FROM catalog_version"))[0][0])


def _whole_second(offset: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=offset)).replace(microsecond=0)


async def test_an_upsert_with_a_schedule_round_trips_and_rewriting_it_changes_nothing(
    own_database_url: str,
) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        endpoint = await _endpoint(catalog.stub)
        later = datetime(2031, 1, 1, tzinfo=UTC)
        endpoint.scheduled_prices.extend(
            [_change(later, "0.3", "1.2"), _change(later + timedelta(days=31), "0.30", "1.5")]
        )
        stored = (
            await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
        ).endpoint
        assert [(c.effective_time.ToDatetime(UTC), c.pricing.prompt_usd_per_mtok,
                 c.price_version) for c in stored.scheduled_prices] == [
            (later, "0.3", 0), (later + timedelta(days=31), "0.3", 0)
        ]  # fmt: skip
        assert stored.price_version == endpoint.price_version  # the current price is unchanged
        assert list((await _endpoint(catalog.stub)).scheduled_prices) == list(
            stored.scheduled_prices
        )

        # Read-modify-write of another field keeps the schedule; the same schedule again
        # (1.50 for 1.5 too) is no change: no version bump.
        version = await _version(own_database_url)
        again = await _endpoint(catalog.stub)
        again.scheduled_prices[1].pricing.completion_usd_per_mtok = "1.50"
        await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=again))
        assert await _version(own_database_url) == version

        # An upsert carries the whole schedule: an empty one clears it.
        del again.scheduled_prices[:]
        cleared = (
            await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=again))
        ).endpoint
        assert list(cleared.scheduled_prices) == []
        assert await _version(own_database_url) == version + 1
        assert not await _fetch(
            own_database_url,
            "SELECT * FROM endpoint_scheduled_prices WHERE endpoint_id = $1",
            ENDPOINT,
        )


async def test_a_bad_schedule_is_refused_naming_each_field(own_database_url: str) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        endpoint = await _endpoint(catalog.stub)
        later = datetime(2031, 1, 1, tzinfo=UTC)
        endpoint.scheduled_prices.extend(
            [
                _change(later, "0.3", ""),
                _change(later, "0.3", "1.2"),
                _change(datetime(2020, 1, 1, tzinfo=UTC), "0.3", "1.2"),
            ]
        )
        endpoint.scheduled_prices[1].pricing.cached_prompt_usd_per_mtok = "0.0000001"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = _violations(caught.value)
        assert set(violations) == {
            "endpoint.scheduled_prices[0].pricing.completion_usd_per_mtok",
            "endpoint.scheduled_prices[1].pricing.cached_prompt_usd_per_mtok",
            "endpoint.scheduled_prices[1].effective_time",
            "endpoint.scheduled_prices[2].effective_time",
        }
        assert (
            "later than the one before" in violations["endpoint.scheduled_prices[1].effective_time"]
        )


async def test_a_price_is_applied_at_its_time_once_with_two_schedulers_racing(
    own_database_url: str,
) -> None:
    async with secure_catalog(
        own_database_url,
        as_service="router",
        version_poll_seconds=60,
        schedule_max_wait_seconds=0.2,
    ) as catalog:
        stub = catalog.stub
        before = await _endpoint(stub)
        at = _whole_second(2.5)
        endpoint = catalog_pb2.Endpoint()
        endpoint.CopyFrom(before)
        endpoint.scheduled_prices.append(_change(at, "0.3", "1.2"))
        await stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
        version = await _version(own_database_url)

        stream = stub.WatchCatalog(catalog_pb2.WatchCatalogRequest(known_version=version))
        # Two more schedulers (other replicas), besides the server's own.
        pools = [await create_pool(own_database_url, min_size=1, max_size=2) for _ in range(2)]
        schedulers = [PriceScheduler(CatalogStore(p), max_wait_seconds=0.05) for p in pools]
        try:
            for scheduler in schedulers:
                await scheduler.start()
            async with asyncio.timeout(10):
                while True:  # snapshots newer than `version`, until the price moves
                    update = await stream.read()
                    assert isinstance(update, catalog_pb2.WatchCatalogResponse)
                    (seen,) = [e for m in update.models for e in m.endpoints if e.id == ENDPOINT]
                    if seen.pricing.prompt_usd_per_mtok == "0.3":
                        break
            assert datetime.now(UTC) >= at
            await asyncio.sleep(0.5)  # let every scheduler look again
        finally:
            stream.cancel()
            for scheduler in schedulers:
                await scheduler.close()
            for pool in pools:
                await pool.close()

        assert list(seen.scheduled_prices) == []
        assert seen.price_version > before.price_version
        history = await _fetch(
            own_database_url,
            "SELECT id, effective_at FROM endpoint_prices WHERE endpoint_id = $1 ORDER BY id",
            ENDPOINT,
        )
        assert history[-1]["effective_at"] == at  # exactly the scheduled time
        assert history[-1]["id"] == seen.price_version
        assert [row["effective_at"] for row in history].count(at) == 1  # applied once
        assert update.version == version + 1 == await _version(own_database_url)
        assert not await _fetch(
            own_database_url,
            "SELECT * FROM endpoint_scheduled_prices WHERE endpoint_id = $1",
            ENDPOINT,
        )


async def test_a_price_due_while_no_catalog_ran_is_applied_at_start_with_its_own_time(
    own_database_url: str,
) -> None:
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        # A model the seed does not hold (the seed rewrites its own endpoints at start).
        model = catalog_pb2.Model(
            id="openai/gpt-sched", display_name="Sched", context_length=1000,
            input_modalities=["text"], output_modalities=["text"],
        )  # fmt: skip
        await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
        endpoint = catalog_pb2.Endpoint(
            model_id=model.id, provider_id="openai", upstream_model="gpt-sched",
            pricing=_pricing("1", "2"), context_length=1000,
        )  # fmt: skip
        endpoint.scheduled_prices.append(_change(_whole_second(3600), "3", "4"))
        await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
    # The catalog is down when the price's time comes (after the endpoint was created: a
    # history row is never recorded before the one it follows).
    await asyncio.sleep(1.2)
    due = _whole_second(0)
    await _fetch(
        own_database_url,
        "UPDATE endpoint_scheduled_prices SET effective_at = $1 WHERE endpoint_id = $2",
        due,
        "openai:openai/gpt-sched",
    )
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        served = await _endpoint(catalog.stub, "openai/gpt-sched")
        assert served.pricing.prompt_usd_per_mtok == "3"
        assert list(served.scheduled_prices) == []
        (last,) = await _fetch(
            own_database_url,
            "SELECT id, effective_at FROM endpoint_prices WHERE endpoint_id = $1"
            " ORDER BY id DESC LIMIT 1",
            "openai:openai/gpt-sched",
        )
        assert last["effective_at"] == due and last["id"] == served.price_version


async def test_a_schedule_an_upsert_carries_that_is_already_due_is_applied_by_it(
    own_database_url: str,
) -> None:
    """A caller that read the schedule just before its time and writes just after (within
    the allowed skew) gets the scheduled price, effective at its time, not its stale one."""
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        endpoint = await _endpoint(catalog.stub)
        await asyncio.sleep(1.2)  # after the seed created the endpoint's current price
        due = _whole_second(0)
        endpoint.scheduled_prices.append(_change(due, "0.3", "1.2"))
        stored = (
            await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))
        ).endpoint
        assert stored.pricing.prompt_usd_per_mtok == "0.3"
        assert list(stored.scheduled_prices) == []
        (last,) = await _fetch(
            own_database_url,
            "SELECT effective_at FROM endpoint_prices WHERE id = $1",
            stored.price_version,
        )
        assert last["effective_at"] == due


def _providers_with_argon_from(start: date) -> list[Any]:
    """The bundled data, with Gemini 4 Argon's announced price starting on ``start``
    (its real date, 2026-12-01, until that date has passed)."""
    out = []
    for provider in bundled:
        if provider.id != "google":
            out.append(provider)
            continue
        models = []
        for model in provider.models:
            if model.id == "gemini-4-argon":
                assert isinstance(model.prices, list)
                prices = [
                    dataclasses.replace(p, constraint=StartDateConstraint(start_date=start))
                    if isinstance(p.constraint, StartDateConstraint)
                    else p
                    for p in model.prices
                ]
                model = dataclasses.replace(model, prices=prices)
            models.append(model)
        out.append(dataclasses.replace(provider, models=models))
    return out


async def test_the_import_schedules_argons_announced_price_and_reapplying_changes_nothing(
    own_database_url: str,
) -> None:
    today = datetime.now(UTC).date()
    start = max(date(2026, 12, 1), today + timedelta(days=1))
    source = read_genai_prices(today, selected_rows(["google"]), _providers_with_argon_from(start))
    async with secure_catalog(own_database_url, version_poll_seconds=60) as catalog:
        pool = await create_pool(own_database_url, min_size=1, max_size=2)
        try:
            importer = CatalogImporter(CatalogStore(pool), pool)
            # Without the seed's schedule, as if an operator had cleared it.
            endpoint = await _endpoint(catalog.stub, "google/gemini-4-argon")
            del endpoint.scheduled_prices[:]
            await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))

            first = await importer.run(dry_run=False, today=today, source=source)
            details = [c.detail for c in first.changes if c.id == ARGON]
            assert (
                f"scheduled {start}: prompt 2 -> 4; completion 10 -> 20; cached_prompt 0.1 -> 0.2"
                in details
            )
            served = await _endpoint(catalog.stub, "google/gemini-4-argon")
            (scheduled,) = served.scheduled_prices
            assert scheduled.effective_time.ToDatetime(UTC) == datetime(
                start.year, start.month, start.day, tzinfo=UTC
            )
            new = scheduled.pricing
            assert (
                new.prompt_usd_per_mtok,
                new.completion_usd_per_mtok,
                new.cached_prompt_usd_per_mtok,
            ) == ("4", "20", "0.2")
            assert served.pricing.prompt_usd_per_mtok == "2"  # today's price stays until then

            again = await importer.run(dry_run=False, today=today, source=source)
            assert list(again.changes) == []
            assert again.catalog_version == first.catalog_version
        finally:
            await pool.close()
