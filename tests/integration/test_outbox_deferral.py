"""An outbox entry whose cost the price check cannot settle yet stays pending without holding
up the entries behind it, also when the consumer re-reads its own pending entries after a
restart or a failure (they are paged past, not re-read forever). Real Postgres and Redis; the
price view is set by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import grpc
import redis.asyncio as redis
from prometheus_client import REGISTRY

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.cost_check import PriceCheck
from switchboard_metering.ledger import Ledger
from switchboard_metering.outbox import OutboxConsumer
from switchboard_metering.prices import PriceWatch
from tests.integration.test_metering_app import eventually, new_key_id, test_settings, usage_event

MODEL, PROVIDER = "sbtest/deferral", "switchboard"


def price_view() -> PriceWatch:
    """A view that knows MODEL's endpoint at $1/$2 per million tokens, current and live."""
    change = catalog_pb2.PriceChange(
        pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2")
    )
    change.effective_time.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))
    history = catalog_pb2.EndpointPriceHistory(endpoint_id=f"{PROVIDER}:{MODEL}", changes=[change])
    watch = PriceWatch(grpc.aio.insecure_channel("127.0.0.1:9"))  # never connected
    watch.apply(catalog_pb2.WatchCatalogResponse(version=1, price_history=[history]))
    watch._set_streaming(True)
    return watch


def deferred_count() -> float:
    labels = {"field": "cost_usd"}
    return REGISTRY.get_sample_value("switchboard_usage_events_deferred_total", labels) or 0.0


async def test_an_unsettled_entry_stays_pending_and_the_next_ones_are_written(
    metering_pool: asyncpg.Pool, redis_client: redis.Redis, redis_prefix: str
) -> None:
    # Settling takes a minute: the odd entry stays unsettled for the whole test.
    ledger = Ledger(
        metering_pool, cost_check=PriceCheck(price_view(), lag=600, skew=300, settle=60)
    )
    settings = test_settings(redis_prefix, consumer=f"fixed-{uuid.uuid4().hex[:6]}")
    key = new_key_id()
    # 10 prompt tokens at $1 and 5 completion tokens at $2 per million.
    honest = [usage_event(key, model=MODEL, provider=PROVIDER, cost="0.00002") for _ in range(3)]
    odd = usage_event(key, model=MODEL, provider=PROVIDER, cost="0.5")

    async def written(count: int) -> None:
        async def check() -> bool:
            rows = await metering_pool.fetchval(
                "SELECT count(*) FROM generations WHERE key_id = $1", key
            )
            return int(rows) == count

        await eventually(check)

    before = deferred_count()
    consumer = OutboxConsumer(redis_client, ledger, settings)
    consumer.start()
    for event in (odd, honest[0]):
        await redis_client.xadd(settings.stream, {EVENT_FIELD: event.SerializeToString()})
    await written(1)
    assert deferred_count() > before
    await consumer.stop()

    # The same consumer again: it re-reads its own pending entries first (the odd one),
    # and must get past them to the new ones.
    again = OutboxConsumer(redis_client, ledger, settings)
    again.start()
    for event in honest[1:]:
        await redis_client.xadd(settings.stream, {EVENT_FIELD: event.SerializeToString()})
    await written(3)
    pending = await redis_client.xpending(settings.stream, settings.group)
    assert pending["pending"] == 1  # the odd one, still to be checked again
    await again.stop()
