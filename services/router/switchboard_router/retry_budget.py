"""The router's retry budget: how many upstream requests beyond each request's first may go out.

Every attempt a request makes after its first (a fallback after an error, a hedge) is an extra
upstream request. During an outage those multiply: every request tries every endpoint, and a
slow provider draws a hedge for every request. The budget caps them as Finagle's
``RetryBudget`` does (``com.twitter.finagle.service.RetryBudget``, the token bucket behind its
``RetryFilter``; gRPC's retry throttling and Envoy's retry budgets follow the same idea):

- each request's first attempt **deposits**; each extra attempt must **withdraw**, and one
  that cannot is not made (no hedge starts, no fallback is tried: the request ends with the
  error it has);
- a withdrawal costs ``1 / ratio`` deposits, so over any window extra attempts are at most
  ``ratio`` (``SWITCHBOARD_RETRY_BUDGET_RATIO``, 0.1: 10 %) of first attempts,
- plus a reserve of ``min_per_second`` (``SWITCHBOARD_RETRY_BUDGET_MIN_PER_SECOND``) a second
  over the window, so that a quiet router can still fall back at all;
- deposits and withdrawals count for ``window`` seconds (10 s) and then expire, counted in
  ten slices (Finagle's ``WindowedAdder``): an outage that ended 10 s ago no longer limits.

Integer units, as Finagle keeps them: a deposit is :data:`SCALE` units and a withdrawal
``SCALE / ratio`` (rounded down), so ratios need no floating point on the hot path. With a
ratio of 0 nothing is deposited and only the reserve allows extra attempts.

**Why per router, in memory.** The budget bounds a *ratio*: extra upstream requests against
first ones. When each router keeps it for its own traffic, the fleet's extra requests are at
most ``ratio`` of the fleet's first attempts plus each router's reserve (N routers: N times
``min_per_second``), which is the guarantee wanted; routers behind a load balancer see the
same mix of traffic, so none is starved while another has budget to spare. A shared budget in
Redis would cost a round trip per attempt, and would fail exactly when it matters: an outage
that also slows or cuts Redis. It is cheap here: a few integer operations under the event
loop, no lock (one thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable

SCALE = 1000  # units in one deposit
DEFAULT_WINDOW_SECONDS = 10.0
SLICES = 10


class RetryBudget:
    """Deposits for first attempts and withdrawals for extra ones over a sliding window (see
    the module docstring). ``clock`` is monotonic seconds (a test may pass its own)."""

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_second < 0 or window_seconds <= 0:
            raise ValueError("ratio and min_per_second are 0 or more, window_seconds above 0")
        self._deposit = SCALE if ratio > 0 else 0
        self._withdrawal = int(SCALE / ratio) if ratio > 0 else SCALE
        self._reserve = int(min_per_second * window_seconds * self._withdrawal)
        self._slice_seconds = window_seconds / SLICES
        self._slices = [0] * SLICES
        self._clock = clock
        self._current = self._slice_at(clock())  # the slice number the ring ends with

    def _slice_at(self, now: float) -> int:
        return int(now / self._slice_seconds)

    def _advance(self) -> int:
        """The ring's index for now, with slices older than the window zeroed."""
        now = self._slice_at(self._clock())
        gone = now - self._current
        if gone > 0:
            for step in range(1, min(gone, SLICES) + 1):
                self._slices[(self._current + step) % SLICES] = 0
            self._current = now
        return now % SLICES

    def _units(self) -> int:
        self._advance()
        return sum(self._slices) + self._reserve

    def deposit(self) -> None:
        """A request sent its first attempt."""
        self._slices[self._advance()] += self._deposit

    def try_withdraw(self) -> bool:
        """Whether an extra attempt may go out now (taking its share when it may)."""
        index = self._advance()
        if sum(self._slices) + self._reserve < self._withdrawal:
            return False
        self._slices[index] -= self._withdrawal
        return True

    def refund(self) -> None:
        """Give back a withdrawal whose attempt was not sent after all."""
        self._slices[self._advance()] += self._withdrawal

    @property
    def balance(self) -> int:
        """Extra attempts that may go out now."""
        return max(0, self._units()) // self._withdrawal
