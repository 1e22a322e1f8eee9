"""No head-of-line wait: many slow streams at once all get their first message promptly.

The short version of ``make bench-concurrency`` (bench/concurrency.py): 200 streams of 40
chunks 50 ms apart (2 s each) opened at once over 8 connections. A stream that waited for
another to end before it started would get its first message after about a stream's length
(2 s); every first message must come well before that. The router's event-loop lag histogram
(switchboard_event_loop_lag_seconds) is served and fed while it runs.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.concurrency import LAG_METRIC, Load, drive, lag_buckets
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_devstack.stack import Stack

pytestmark = pytest.mark.asyncio

CHUNKS = 40
GAP = 0.05  # seconds between chunks: each stream lasts CHUNKS * GAP = 2 s
STREAMS = 200
CONNECTIONS = 8
# Well under a stream's length: a stream queued behind another would take >= 2 s.
FIRST_MESSAGE_BOUND = 1.0

STACK_ENV = {
    "SWITCHBOARD_DEMO_REPLY_TOKENS": str(CHUNKS),
    "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(GAP),
}


def frozen_objects(text: str) -> float:
    """The router's ``switchboard_gc_frozen_objects`` in a scrape."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "switchboard_gc_frozen_objects":
                return sample.value
    return 0.0


async def test_every_stream_starts_without_waiting_for_others(
    stack: Stack, metering: metering_pb2_grpc.MeteringServiceAsyncStub
) -> None:
    key = await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="e2e-concurrency", name="e2e")
    )
    ca = None if stack.plaintext else stack.pki.read("operator")[2]
    load = Load(stack.address("router"), ca, key.secret, STREAMS, CONNECTIONS, CHUNKS, 60.0)
    result = await drive(load, time.time())
    assert result["failures"] == []
    done = result["done"]
    assert isinstance(done, list) and len(done) == STREAMS
    first = sorted(d[0] for d in done)
    late = [f for f in first if f > FIRST_MESSAGE_BOUND]
    assert not late, (
        f"{len(late)} of {STREAMS} streams got their first message after"
        f" {FIRST_MESSAGE_BOUND} s (max {first[-1]:.2f} s; a stream lasts {CHUNKS * GAP:g} s)"
    )
    # Every stream ran its course while the others did, not after them.
    assert max(d[1] for d in done) < CHUNKS * GAP + 2 * FIRST_MESSAGE_BOUND + 1.0

    url = f"http://127.0.0.1:{stack.ports.router_metrics}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    buckets = lag_buckets(text)
    assert buckets, f"the router serves no {LAG_METRIC}"
    assert buckets[float("inf")] > 0
    # Its start-up heap is frozen out of the collector's full passes (switchboard_core.heap).
    assert frozen_objects(text) > 10_000
