"""Usage costs are checked against the catalog's price history: the catalog records every
price change and sends the history to metering (WatchCatalog, as the metering service), and
metering refuses an event whose cost is no price its endpoint had around its create_time, or
whose endpoint the catalog does not have: by name through RecordUsage, dead-lettered through
the outbox while the honest events around it land exactly once. An honest event priced at a
price since changed is accepted, one priced at a change metering has not heard of yet is
waited for, and without any view of the catalog events are accepted and counted.
Real Postgres, Redis and catalog and metering servers, in process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_catalog import store as store_module
from switchboard_catalog.store import CatalogStore
from switchboard_catalog.testing import RunningCatalog
from switchboard_core.db import create_pool
from switchboard_core.money import format_usd
from switchboard_core.pricing import Counts, PriceSheet
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.config import OutboxSettings
from tests.integration.test_metering_app import (
    Metering,
    eventually,
    field_violations,
    new_key_id,
    running_metering,
    test_settings,
    usage_event,
)
from tests.secure import secure_catalog

SETTLE = 0.5  # seconds a catalog change may take to reach metering, in these tests
PROVIDER = "switchboard"  # seeded


@pytest.fixture(scope="module")
async def catalog(database_url: str) -> AsyncIterator[RunningCatalog]:
    """Its stub watches as the metering service and writes as an operator."""
    async with secure_catalog(database_url, as_service="metering") as running:
        yield running


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


def outbox_settings(redis_prefix: str) -> OutboxSettings:
    # Deferred entries are claimed again quickly.
    return test_settings(f"{redis_prefix}prices:", claim_idle_ms=200, batch_size=7)


@pytest.fixture(scope="module")
async def metering(
    catalog: RunningCatalog, database_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[Metering]:
    async with running_metering(
        database_url,
        redis_url,
        outbox_settings(redis_prefix),
        catalog_addr=catalog.address,
        price_settle_seconds=SETTLE,
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def new_endpoint(catalog: RunningCatalog, prompt: str, completion: str) -> str:
    """A new model served by the seeded provider at these prices; its endpoint id."""
    model = catalog_pb2.Model(
        id=f"sbtest/prices-{uuid.uuid4().hex[:10]}",
        display_name="Prices test model",
        context_length=4096,
        input_modalities=["text"],
        output_modalities=["text"],
    )
    await catalog.stub.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    await set_price(catalog, model.id, prompt, completion)
    return f"{PROVIDER}:{model.id}"


async def set_price(
    catalog: RunningCatalog, model_id: str, prompt: str, completion: str, **more: Any
) -> None:
    endpoint = catalog_pb2.Endpoint(
        model_id=model_id,
        provider_id=PROVIDER,
        upstream_model="demo",
        pricing=common_pb2.Pricing(prompt_usd_per_mtok=prompt, completion_usd_per_mtok=completion),
        context_length=4096,
        **more,
    )
    await catalog.stub.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))


def priced(key: str, endpoint: str, prompt: str, completion: str) -> metering_pb2.UsageEvent:
    """An honest event (usage_event's token counts) at these prices."""
    event = usage_event(key, model=endpoint.split(":", 1)[1], provider=PROVIDER)
    usage = event.usage
    cost = PriceSheet.flat(prompt, completion).cost(Counts.of(usage))
    event.cost_usd = format_usd(cost)
    return event


async def ledger_rows(pool: asyncpg.Pool, key: str) -> list[str]:
    rows = await pool.fetch("SELECT generation_id FROM generations WHERE key_id = $1", key)
    return sorted(row["generation_id"] for row in rows)


async def watched_history(
    catalog: RunningCatalog, endpoint: str, expected: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The endpoint's (prompt, completion) prices in WatchCatalog snapshots, read until they
    are ``expected`` (the broadcaster publishes a change shortly after it is made)."""
    request = catalog_pb2.WatchCatalogRequest(include_price_history=True)
    stream = catalog.stub.WatchCatalog(request)
    try:
        async with asyncio.timeout(5):
            while True:
                message = await stream.read()
                assert isinstance(message, catalog_pb2.WatchCatalogResponse)
                [history] = [h for h in message.price_history if h.endpoint_id == endpoint]
                prices = [
                    (c.pricing.prompt_usd_per_mtok, c.pricing.completion_usd_per_mtok)
                    for c in history.changes
                ]
                if prices == expected:
                    return prices
    finally:
        stream.cancel()


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the catalog's history ------------------------------------------------------------------


async def test_the_catalog_records_each_price_change_and_the_snapshot_carries_it(
    catalog: RunningCatalog, pool: asyncpg.Pool
) -> None:
    endpoint = await new_endpoint(catalog, "1", "2")
    model_id = endpoint.split(":", 1)[1]
    await set_price(catalog, model_id, "1.0", "2.00")  # equal prices: no change
    await set_price(catalog, model_id, "3", "4")
    await set_price(catalog, model_id, "3", "4", quantization="fp8")  # not a price change
    rows = await pool.fetch(
        "SELECT effective_at, prompt_price FROM endpoint_prices WHERE endpoint_id = $1 ORDER BY id",
        endpoint,
    )
    assert [row["prompt_price"] for row in rows] == [Decimal(1), Decimal(3)]
    assert rows[0]["effective_at"] < rows[1]["effective_at"]
    expected = [("1", "2"), ("3", "4")]
    assert await watched_history(catalog, endpoint, expected) == expected
    # Routers do not ask for it, and get none.
    stream = catalog.stub.WatchCatalog(catalog_pb2.WatchCatalogRequest())
    message = await asyncio.wait_for(stream.read(), 5)
    stream.cancel()
    assert isinstance(message, catalog_pb2.WatchCatalogResponse)
    assert message.models and not message.price_history


async def test_the_snapshot_history_is_bounded(
    catalog: RunningCatalog, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = await new_endpoint(catalog, "9", "9")
    now = datetime.now(UTC)
    for days, price in ((500, 5), (450, 6), (10, 7)):  # older changes, recorded directly
        await pool.execute(
            "INSERT INTO endpoint_prices (endpoint_id, effective_at, prompt_price,"
            " completion_price) VALUES ($1, $2, $3, $3)",
            endpoint,
            now - timedelta(days=days),
            price,
        )
    store = CatalogStore(pool, price_history_days=400)

    async def prompt_prices() -> list[str]:
        snapshot = await store.snapshot()
        [history] = [h for h in snapshot.price_history if h.endpoint_id == endpoint]
        return [c.pricing.prompt_usd_per_mtok for c in history.changes]

    # 450 days ago: in effect when the 401 days begin; 500 days ago: not needed.
    assert await prompt_prices() == ["6", "7", "9"]
    monkeypatch.setattr(store_module, "MAX_PRICE_CHANGES", 2)
    assert await prompt_prices() == ["7", "9"]


async def test_the_history_is_append_only(catalog: RunningCatalog, pool: asyncpg.Pool) -> None:
    endpoint = await new_endpoint(catalog, "1", "1")
    for statement in (
        "UPDATE endpoint_prices SET prompt_price = 0 WHERE endpoint_id = $1",
        "DELETE FROM endpoint_prices WHERE endpoint_id = $1",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await pool.execute(statement, endpoint)


# --- RecordUsage --------------------------------------------------------------------------


async def test_record_usage_refuses_a_cost_or_an_endpoint_that_is_not_the_catalogs(
    catalog: RunningCatalog, metering: Metering, pool: asyncpg.Pool
) -> None:
    endpoint = await new_endpoint(catalog, "1", "2")
    key = new_key_id()
    honest = priced(key, endpoint, "1", "2")
    forged = priced(key, endpoint, "1", "2")
    forged.cost_usd = format_usd(Decimal(forged.cost_usd) * 1000)
    unknown = priced(key, endpoint, "1", "2")
    unknown.endpoint_id = f"{PROVIDER}:sbtest/nowhere"
    request = metering_pb2.RecordUsageRequest(events=[honest, forged, unknown])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metering.router.RecordUsage(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["events[1].cost_usd", "events[2].endpoint_id"]
    assert f"expected {honest.cost_usd}" in (caught.value.details() or "")
    assert await ledger_rows(pool, key) == []
    await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[honest]))
    assert await ledger_rows(pool, key) == [honest.generation_id]


async def test_an_honest_event_at_the_price_before_a_change_is_accepted(
    catalog: RunningCatalog, metering: Metering, pool: asyncpg.Pool, client: redis.Redis
) -> None:
    endpoint = await new_endpoint(catalog, "1", "2")
    key = new_key_id()
    await set_price(catalog, endpoint.split(":", 1)[1], "5", "6")
    # Dated after the change: the router's snapshot still had the old price.
    at_old = [priced(key, endpoint, "1", "2") for _ in range(2)]
    at_new = [priced(key, endpoint, "5", "6") for _ in range(2)]
    await metering.router.RecordUsage(
        metering_pb2.RecordUsageRequest(events=[at_old[0], at_new[0]])
    )
    for event in (at_old[1], at_new[1]):
        await client.xadd(metering.outbox.stream, {EVENT_FIELD: event.SerializeToString()})

    async def all_written() -> bool:
        return len(await ledger_rows(pool, key)) == 4

    await eventually(all_written)
    assert await ledger_rows(pool, key) == sorted(e.generation_id for e in at_old + at_new)


async def test_a_price_metering_has_not_heard_of_yet_is_waited_for_not_refused(
    catalog: RunningCatalog,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    pool: asyncpg.Pool,
    client: redis.Redis,
) -> None:
    """The router saw a price change before metering: RecordUsage waits for it, the outbox
    leaves the entry pending and checks it again. A change made straight in the database
    reaches no watcher until the next catalog version, which the test then makes."""
    outbox = outbox_settings(redis_prefix)
    async with running_metering(
        database_url,
        redis_url,
        outbox,
        catalog_addr=catalog.address,
        price_settle_seconds=5,
    ) as metering:
        endpoint = await new_endpoint(catalog, "1", "2")
        key = new_key_id()
        await pool.execute(
            "UPDATE endpoints SET prompt_price = 7, completion_price = 8 WHERE id = $1", endpoint
        )
        waited, queued = priced(key, endpoint, "7", "8"), priced(key, endpoint, "7", "8")
        deferred_before = sample("switchboard_usage_events_deferred_total", {"field": "cost_usd"})
        await client.xadd(outbox.stream, {EVENT_FIELD: queued.SerializeToString()})
        request = metering_pb2.RecordUsageRequest(events=[waited])
        recording = asyncio.ensure_future(metering.router.RecordUsage(request))

        async def deferred() -> bool:
            counted = sample("switchboard_usage_events_deferred_total", {"field": "cost_usd"})
            return counted > deferred_before

        await eventually(deferred)
        assert not recording.done()
        await new_endpoint(catalog, "1", "1")  # a new catalog version, with the change

        async def both_written() -> bool:
            return len(await ledger_rows(pool, key)) == 2

        await asyncio.wait_for(recording, 5)
        await eventually(both_written)


# --- the outbox ---------------------------------------------------------------------------


async def test_the_outbox_dead_letters_bad_costs_and_writes_the_honest_events_once(
    catalog: RunningCatalog,
    metering: Metering,
    pool: asyncpg.Pool,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = await new_endpoint(catalog, "1", "2")
    key = new_key_id()
    outbox = metering.outbox
    good: list[metering_pb2.UsageEvent] = []
    bad: dict[bytes, str] = {}
    metric_before = {
        name: sample(
            "switchboard_usage_events_dead_lettered_total", {"reason": "invalid", "field": name}
        )
        for name in ("cost_usd", "endpoint_id")
    }
    dead_before = await client.xlen(outbox.dead_letter_stream)
    with caplog.at_level(logging.ERROR, logger="switchboard_metering.outbox"):
        for index in range(6):
            for _ in range(2):
                event = priced(key, endpoint, "1", "2")
                good.append(event)
                await client.xadd(outbox.stream, {EVENT_FIELD: event.SerializeToString()})
            poisoned = priced(key, endpoint, "1", "2")
            if index % 2:
                poisoned.endpoint_id, why = f"{PROVIDER}:sbtest/nowhere", "endpoint_id"
            else:
                poisoned.cost_usd, why = str(Decimal(poisoned.cost_usd) * 1000), "cost_usd"
            entry: Any = await client.xadd(
                outbox.stream, {EVENT_FIELD: poisoned.SerializeToString()}
            )
            bad[entry] = why
        for event in good[:3]:  # replays change nothing
            await client.xadd(outbox.stream, {EVENT_FIELD: event.SerializeToString()})

        async def done() -> bool:
            pending = await client.xpending(outbox.stream, outbox.group)
            dead = await client.xlen(outbox.dead_letter_stream) - dead_before
            return dead == len(bad) and pending["pending"] == 0

        await eventually(done)
    assert await ledger_rows(pool, key) == sorted(e.generation_id for e in good)
    dead: Any = await client.xrange(outbox.dead_letter_stream)
    assert {fields[b"id"]: fields[b"reason"].decode() for _, fields in dead[dead_before:]} == {
        entry: f"invalid event.{why}" for entry, why in bad.items()
    }
    for name, before in metric_before.items():
        after = sample(
            "switchboard_usage_events_dead_lettered_total", {"reason": "invalid", "field": name}
        )
        assert after == before + 3
    logged = {
        record.entry_id.encode()  # type: ignore[attr-defined]
        for record in caplog.records
        if record.levelno == logging.ERROR and "dead-letter" in record.getMessage()
    }
    assert set(bad) <= logged


# --- no view of the catalog -----------------------------------------------------------------


async def test_without_a_view_of_the_catalog_events_are_accepted_and_counted(
    database_url: str, redis_url: str, redis_prefix: str, pool: asyncpg.Pool, client: redis.Redis
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    outbox = outbox_settings(redis_prefix)
    before = sample("switchboard_usage_cost_unverified_total", {"reason": "no_view"})
    async with running_metering(
        database_url, redis_url, outbox, catalog_addr=nowhere, catalog_wait_seconds=0.2
    ) as metering:
        key = new_key_id()
        direct, queued = usage_event(key, cost="0.42"), usage_event(key, cost="0.42")
        await metering.router.RecordUsage(metering_pb2.RecordUsageRequest(events=[direct]))
        await client.xadd(outbox.stream, {EVENT_FIELD: queued.SerializeToString()})

        async def written() -> bool:
            return len(await ledger_rows(pool, key)) == 2

        await eventually(written)
    assert sample("switchboard_usage_cost_unverified_total", {"reason": "no_view"}) >= before + 2
