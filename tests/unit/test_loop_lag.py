"""The event-loop lag probe: a stall shows as its length; an idle loop as next to nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from switchboard_core.loop_lag import BUCKETS, LoopLagProbe


def histogram() -> Histogram:
    return Histogram("lag_test", "test", buckets=BUCKETS, registry=CollectorRegistry())


def count(h: Histogram, bound: float) -> float:
    for metric in h.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and float(sample.labels["le"]) == bound:
                return float(sample.value)
    raise AssertionError(f"no bucket {bound}")


async def test_a_stall_is_measured_as_its_length() -> None:
    h = histogram()
    probe = LoopLagProbe(interval=0.01, histogram=h)
    loop = asyncio.get_running_loop()
    loop.call_later(0.002, time.sleep, 0.15)  # a callback that blocks the loop for 150 ms
    lag = await probe.sample()
    assert 0.12 <= lag < 1.0
    assert count(h, 0.1) == 0 and count(h, 0.2) == 1


async def test_an_idle_loop_shows_little_lag() -> None:
    h = histogram()
    probe = LoopLagProbe(interval=0.01, histogram=h)
    lags = [await probe.sample() for _ in range(5)]
    assert min(lags) < 0.05  # the machine may be busy, but not every time
    assert count(h, float("inf")) == 5


async def test_runs_until_stopped() -> None:
    h = histogram()
    probe = LoopLagProbe(interval=0.005, histogram=h)
    probe.start()
    await asyncio.sleep(0.2)
    await probe.stop()
    seen = count(h, float("inf"))
    assert seen >= 3
    await asyncio.sleep(0.05)
    assert count(h, float("inf")) == seen


@pytest.mark.parametrize("interval", [0.0, 0.001, 11.0])
def test_the_interval_is_bounded(interval: float) -> None:
    with pytest.raises(ValueError, match="loop lag interval"):
        LoopLagProbe(interval=interval)
