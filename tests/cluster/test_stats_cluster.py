"""Shared endpoint statistics and breakers on a real Redis Cluster: a router's flush and
refresh are plain pipelines (the cluster client splits them by node) whose scripts each touch
one key."""

from __future__ import annotations

import time

import redis.asyncio as redis

from switchboard_core.redis_client import RedisDeadline
from switchboard_router.breaker import Closing, Opening
from switchboard_router.stats_store import StatsStore, Tally, bucket_of


async def test_counts_and_breakers_of_many_endpoints_round_trip(
    cluster: redis.Redis, prefix: str
) -> None:
    store = StatsStore(cluster, prefix, window_seconds=60, deadline=RedisDeadline(5.0))
    now = round(time.time(), 3)  # whole milliseconds, as Redis keeps an opening's times
    bucket = bucket_of(now)
    endpoints = [f"ep-{i}" for i in range(8)]  # their keys spread over the nodes
    tallies = {(e, bucket): Tally(requests=i + 1, failures=i) for i, e in enumerate(endpoints)}
    opening = Opening(epoch=round(now * 1000), until=now + 30, cause="failures")
    kept = await store.flush(tallies, [("ep-1", opening, 60.0)], endpoints, now)
    assert kept == [opening]
    shorter = Opening(epoch=opening.epoch + 1, until=now + 5, cause="failures")
    assert await store.flush({}, [("ep-1", shorter, 60.0)], [], now) == [opening]  # the longer

    read = await store.read({e: [bucket] for e in endpoints}, [("ep-1", opening.epoch, 30)], now)
    assert sorted(read.endpoints) == endpoints
    assert [read.tallies[(e, bucket)].requests for e in endpoints] == list(range(1, 9))
    assert read.openings["ep-1"] == opening and read.openings["ep-2"] is None
    assert read.claims == (1,)  # the first probe token of that opening
    await store.flush({}, [("ep-1", Closing(opening.epoch), 0.0)], [], now)
    assert (await store.read({"ep-1": []}, [], now, index=False)).openings["ep-1"] is None
