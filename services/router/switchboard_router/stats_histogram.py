"""Fixed log-spaced histograms, so that every router's counts add up and percentiles come from
the sum (:mod:`switchboard_router.endpoint_stats`).

A percentile cannot be averaged across routers, but bucket counts can be added when every
router uses the same bounds. So time to first token and throughput are counted into fixed
buckets whose bounds grow by ``2 ** (1 / 4)`` (about 19 %) from ``low`` to ``high``; a value
below ``low`` lands in bucket 0, one at or above ``high`` in the last. A percentile is read off
the merged counts, interpolated geometrically inside its bucket: within one bucket's width of
the exact sample percentile (at most 19 % off, usually far less), whatever the number of
samples or routers. Bucket indexes are what Redis stores, so the scales are part of the shared
layout: changing ``low``, ``high`` or the step changes the meaning of stored counts (old ones
age out of the window within ``SWITCHBOARD_STATS_WINDOW_SECONDS``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Buckets per doubling: the bounds' ratio is 2 ** (1 / STEPS_PER_DOUBLING).
STEPS_PER_DOUBLING = 4
# The percentiles Figures carries.
QUANTILES = (50, 75, 90, 99)


@dataclass(frozen=True, slots=True)
class LogScale:
    """Bucket ``0`` holds values below ``low``; bucket ``i`` (1 .. ``top - 1``) values in
    ``[bound(i - 1), bound(i))``; bucket ``top`` values at or above ``bound(top - 1)``."""

    low: float
    high: float

    @property
    def top(self) -> int:
        """The index of the overflow bucket."""
        return math.ceil(math.log2(self.high / self.low) * STEPS_PER_DOUBLING) + 1

    def bound(self, index: int) -> float:
        """The upper bound of bucket ``index`` (``low`` for bucket 0)."""
        return self.low * 2 ** (index / STEPS_PER_DOUBLING)

    def index(self, value: float) -> int:
        if math.isnan(value) or value < self.low:
            return 0
        if math.isinf(value):
            return self.top
        step = math.floor(math.log2(value / self.low) * STEPS_PER_DOUBLING) + 1
        return min(step, self.top)

    def percentiles(
        self, counts: Mapping[int, int], minimum: int = 1
    ) -> tuple[float, float, float, float] | None:
        """The 50th, 75th, 90th and 99th percentiles of ``counts`` (bucket index -> count);
        None when they hold fewer than ``minimum`` samples."""
        ordered = sorted((i, n) for i, n in counts.items() if n > 0 and 0 <= i <= self.top)
        total = sum(n for _, n in ordered)
        if total < max(1, minimum):
            return None
        p50, p75, p90, p99 = (self._at(ordered, total, q / 100) for q in QUANTILES)
        return p50, p75, p90, p99

    def _at(self, ordered: list[tuple[int, int]], total: int, share: float) -> float:
        rank = share * total
        seen = 0
        for index, count in ordered:
            if seen + count >= rank:
                if index == 0:
                    return self.low
                if index == self.top:
                    return self.bound(self.top - 1)
                lower, upper = self.bound(index - 1), self.bound(index)
                fraction = (rank - seen) / count
                return float(lower * (upper / lower) ** fraction)
            seen += count
        return self.bound(self.top - 1)  # not reached: the last bucket holds the rest


# Time to first token, seconds: 10 ms to 10 minutes (65 buckets).
TTFT_SCALE = LogScale(0.01, 600.0)
# Output tokens per second after the first token: 0.5 to 20,000 (63 buckets).
THROUGHPUT_SCALE = LogScale(0.5, 20_000.0)


def merged(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Histograms added bucket by bucket (the same scale's)."""
    out: dict[int, int] = {}
    for part in parts:
        for index, count in part.items():
            out[index] = out.get(index, 0) + count
    return out
