"""How late the event loop runs what is due: ``switchboard_event_loop_lag_seconds``.

Every service runs one :class:`LoopLagProbe` (started and stopped with its
:class:`~switchboard_core.server.GrpcServer`). It sleeps ``interval`` seconds over and over and
records how much later than asked it woke up: the time the loop spent on other work before it
got back to this timer. A loop that keeps up shows a millisecond or less; a stall (one
callback running long, or a burst of ready callbacks) shows as its length. gRPC's asyncio
server accepts one new call per loop round trip, so a loop lagging by ``L`` admits new streams
at most about ``1 / (2 L)`` a second: this histogram is the first thing to read when new
streams start late under load (docs/BENCHMARKS.md, "1,000 concurrent streams").

Cost: one timer per ``interval`` (20 a second by default) and a histogram observation; no
allocation grows with time (a Prometheus histogram is fixed-size).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

from switchboard_core.periodic import BackgroundTask

# From "keeping up" to "a new stream waits seconds"; 20 ms is the target's bound.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
DEFAULT_INTERVAL = 0.05
MIN_INTERVAL = 0.005
MAX_INTERVAL = 10.0

LOOP_LAG_SECONDS = Histogram(
    "switchboard_event_loop_lag_seconds",
    "How much later than due the event loop ran a timer (sampled every 50 ms): its stalls.",
    buckets=BUCKETS,
)


class LoopLagProbe(BackgroundTask):
    """Samples the running loop's lag into ``histogram`` every ``interval`` seconds."""

    name = "event-loop-lag"

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, histogram: Histogram = LOOP_LAG_SECONDS
    ) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ValueError(
                f"loop lag interval must be between {MIN_INTERVAL} and {MAX_INTERVAL} s,"
                f" not {interval}"
            )
        self.interval = interval
        self._histogram = histogram

    async def _run(self) -> None:
        while True:
            await self.sample()

    async def sample(self) -> float:
        """One sleep of ``interval``; records and returns how late it ended."""
        asked = time.monotonic()
        await asyncio.sleep(self.interval)
        lag = max(0.0, time.monotonic() - asked - self.interval)
        self._histogram.observe(lag)
        return lag
