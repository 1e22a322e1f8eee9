"""Property: replays, reorders, re-batching and concurrency never change the rollups.

Whatever sequence of batches carries a set of events (each event at least once, any number
of times, in any order, sequentially or concurrently), the ledger ends up with exactly the
rollups of the set itself. Events come in pairs sharing a generation id (attempts 0 and 1)
and straddle a month boundary, so the ledger's whole key and two partitions are exercised.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard.metering.v1 import metering_pb2
from switchboard_core.db import create_pool, migrate
from switchboard_core.money import format_usd
from switchboard_metering.app import MIGRATIONS
from switchboard_metering.event_rules import EventWindow
from switchboard_metering.ledger import Ledger
from switchboard_metering.partitions import Partitions
from tests.integration.test_metering_app import new_key_id, usage_event

# Two hours before a month ends: events land in two monthly partitions.
T0 = datetime(2024, 6, 30, 22, 0, tzinfo=UTC)
RollupKey = tuple[str, str, datetime]


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=8)
    await migrate(pool, "metering", MIGRATIONS)
    yield pool
    await pool.close()


event_specs = st.lists(
    st.tuples(
        st.sampled_from(["m/a", "m/b"]),
        st.sampled_from(["p1", "p2"]),
        st.integers(min_value=0, max_value=150),  # minutes after T0: three hour buckets
        # At most $0.10 a token (usage_bounds), and every event has 5 completion tokens.
        st.decimals(min_value=0, max_value="0.5", places=12).map(format_usd),
        # Prompt tokens; usage_event adds a cache-write token, which the prompt must include.
        st.integers(min_value=1, max_value=10_000),
        # Web searches (a finer count, migration 0006), summed like the tokens.
        st.integers(min_value=0, max_value=5),
    ),
    min_size=1,
    max_size=12,
)


@st.composite
def deliveries(
    draw: st.DrawFn,
) -> tuple[list[tuple[str, str, int, str, int, int]], list[list[int]], bool]:
    """A set of events, batches of their indexes (with replays), and whether to run them at once."""
    specs = draw(event_specs)
    indexes = st.integers(min_value=0, max_value=len(specs) - 1)
    batches = draw(st.lists(st.lists(indexes, min_size=1, max_size=10), max_size=5))
    missing = sorted(set(range(len(specs))) - {i for batch in batches for i in batch})
    if missing:
        batches.append(draw(st.permutations(missing)))
    return specs, draw(st.permutations(batches)), draw(st.booleans())


def expected_rollups(
    events: list[metering_pb2.UsageEvent],
) -> dict[RollupKey, tuple[int, int, int, Decimal]]:
    sums: dict[RollupKey, tuple[int, int, int, Decimal]] = defaultdict(
        lambda: (0, 0, 0, Decimal(0))
    )
    for event in events:
        hour = event.create_time.ToDatetime(tzinfo=UTC).replace(minute=0, second=0, microsecond=0)
        requests, prompt, searches, cost = sums[(event.model_id, event.provider_id, hour)]
        sums[(event.model_id, event.provider_id, hour)] = (
            requests + 1,
            prompt + event.usage.prompt_tokens,
            searches + event.usage.web_searches,
            cost + Decimal(event.cost_usd),
        )
    return dict(sums)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
async def test_rollups_equal_the_set_of_events(
    pool: asyncpg.Pool,
    case: tuple[list[tuple[str, str, int, str, int, int]], list[list[int]], bool],
) -> None:
    specs, batches, concurrent = case
    key = new_key_id()
    events = [
        usage_event(
            key,
            f"gen-{key}-{index // 2}",
            model=m,
            provider=p,
            when=T0 + timedelta(minutes=mins),
            cost=cost,
            prompt=tokens,
        )
        for index, (m, p, mins, cost, tokens, _) in enumerate(specs)
    ]
    for index, event in enumerate(events):
        event.attempt = index % 2
        event.usage.web_searches = specs[index][5]
        event.price_version = index
    # The ledger's clock just after the events, so that they are inside its window.
    later = T0 + timedelta(hours=3)
    ledger = Ledger(pool, Partitions(pool, window=EventWindow(clock=lambda: later)))
    calls = [ledger.record([events[i] for i in batch], source="rpc") for batch in batches]
    if concurrent:
        results = await asyncio.gather(*calls)
    else:
        results = [await call for call in calls]
    assert sum(result.recorded for result in results) == len(events)
    assert sum(r.recorded + r.duplicates for r in results) == sum(map(len, batches))

    rows = await pool.fetch(
        "SELECT model_id, provider_id, bucket_start, requests, prompt_tokens, web_searches, cost"
        " FROM usage_rollups WHERE key_id = $1",
        key,
    )
    got = {
        (r["model_id"], r["provider_id"], r["bucket_start"]): (
            r["requests"],
            r["prompt_tokens"],
            r["web_searches"],
            r["cost"],
        )
        for r in rows
    }
    assert got == expected_rollups(events)
    assert await pool.fetchval("SELECT count(*) FROM generations WHERE key_id = $1", key) == len(
        events
    )
