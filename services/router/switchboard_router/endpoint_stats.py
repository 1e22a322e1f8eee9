"""Live endpoint statistics, shared between routers through Redis (SCAFFOLD: the interface
that routing, hedging and the public model list read; the recorder comes with it).

:class:`Figures` is one endpoint's recent behaviour; :class:`LiveView` is what the request
path reads (no I/O: a local copy refreshed in the background).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p75: float
    p90: float
    p99: float

    def at(self, percentile: int) -> float:
        """The value at ``percentile`` (50, 75, 90 or 99; others round up to the next)."""
        if percentile <= 50:
            return self.p50
        if percentile <= 75:
            return self.p75
        if percentile <= 90:
            return self.p90
        return self.p99


@dataclass(frozen=True, slots=True)
class Figures:
    """One endpoint over the sliding window, across every router."""

    window_seconds: float
    requests: int  # attempts sent
    failures: int  # provider-side failures: 5xx, timeouts, stalls, connection errors, 429s
    rate_limited: int  # 429s
    ttft: Percentiles | None  # seconds; None when too few first tokens were measured
    throughput: Percentiles | None  # output tokens per second; None when unmeasured

    @property
    def uptime(self) -> float:
        """The share of attempts that did not fail on the provider's side; 1.0 with none."""
        return 1.0 - self.failures / self.requests if self.requests else 1.0


class LiveView(Protocol):
    """What the request path reads: local, no I/O."""

    def figures(self, endpoint_id: str) -> Figures | None:
        """The endpoint's figures; None when it has none yet."""
        ...

    def breaker(self, endpoint_id: str) -> str:
        """CLOSED, OPEN or HALF_OPEN."""
        ...

    def allows(self, endpoint_id: str) -> bool:
        """Whether a request may be sent now: closed, or a half-open probe slot is free
        (taking it). An open endpoint is skipped without a network call."""
        ...


class NoLiveView:
    """No figures and every breaker closed (tests, and the router before its first refresh)."""

    def figures(self, endpoint_id: str) -> Figures | None:
        return None

    def breaker(self, endpoint_id: str) -> str:
        return CLOSED

    def allows(self, endpoint_id: str) -> bool:
        return True


NO_LIVE_VIEW = NoLiveView()
