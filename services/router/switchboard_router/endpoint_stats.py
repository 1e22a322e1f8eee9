"""Live endpoint statistics and circuit breakers, shared between routers through Redis.

:class:`Figures` is one endpoint's recent behaviour; :class:`LiveView` is what the request
path reads (no I/O: a local copy refreshed in the background). :class:`LiveStats` is both the
relay's :class:`~switchboard_router.relay.AttemptObserver` and the router's LiveView:

- on the request path it only counts, in memory: per endpoint and time bucket
  (:data:`~switchboard_router.stats_store.BUCKET_SECONDS`), attempts, failures on the
  provider's side (:func:`outcome`), timeouts and 429s, and time to first token and output
  throughput in fixed log-spaced histogram buckets (:mod:`.stats_histogram`), and tells the
  endpoint's :class:`~switchboard_router.breaker.Breaker`;
- a background task adds this router's new counts to everyone's in Redis every
  ``stats_flush_seconds`` (one pipeline of ``HINCRBY``; breaker openings and closes ride
  along), and every ``stats_refresh_seconds`` reads everyone's back (one pipeline) and
  rebuilds an immutable snapshot of :class:`Figures` over ``stats_window_seconds``, adopting
  breakers other routers opened or closed and claiming half-open probe tokens
  (:mod:`.stats_store` has the layout);
- when Redis cannot be reached it keeps serving what it read last plus its own counts, keeps
  the counts it could not write (those still inside the window) and writes them when it can,
  and breakers keep working locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from switchboard_core.budget import DEFAULT_PREFIX
from switchboard_core.periodic import BackgroundTask
from switchboard_core.redis_client import RedisDeadline
from switchboard_router import metrics, stats_gauges
from switchboard_router.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerPolicy,
    Change,
    Opening,
    Window,
)
from switchboard_router.providers.base import (
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStalled,
    UpstreamTimeout,
)
from switchboard_router.stats_histogram import THROUGHPUT_SCALE, TTFT_SCALE
from switchboard_router.stats_store import Series, StatsStore, Tally, bucket_of

if TYPE_CHECKING:
    from switchboard_router.catalog_cache import Route
    from switchboard_router.config import RouterConfig

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "NO_LIVE_VIEW",
    "OPEN",
    "Figures",
    "LiveSettings",
    "LiveStats",
    "LiveView",
    "NoLiveView",
    "Percentiles",
]

log = logging.getLogger(__name__)


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
    timeouts: int = 0  # failures that were a time limit: upstream timeouts and stalls

    @property
    def uptime(self) -> float:
        """The share of attempts that did not fail on the provider's side; 1.0 with none."""
        return max(0.0, 1.0 - self.failures / self.requests) if self.requests else 1.0


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

# -- what an attempt's error says about the endpoint -----------------------------------------

ANSWERED = "answered"  # the endpoint refused the request itself: it is up, not at fault
FAILED = "failed"
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
# Most specific class first wins (looked up along the error's MRO). Everything else an
# adapter raises (5xx, connection errors, protocol errors, a rejected credential, a missing
# upstream model) fails the endpoint: none of those gets better by sending the next request.
_OUTCOMES: dict[type, str] = {
    UpstreamBadRequest: ANSWERED,  # 400, 413, 422 and a too-long context: the client's
    UpstreamTimeout: TIMEOUT,
    UpstreamStalled: TIMEOUT,
    UpstreamRateLimited: RATE_LIMITED,
}


def outcome(error: UpstreamError) -> str:
    for cls in type(error).__mro__:
        found = _OUTCOMES.get(cls)
        if found is not None:
            return found
    return FAILED


# Throughput needs a stream long enough to time: a completion of one token, or one whose
# tokens came in a single burst, says nothing about the endpoint's speed.
MIN_THROUGHPUT_TOKENS = 2
MIN_THROUGHPUT_SECONDS = 0.05
# Percentiles from fewer samples than this are not shown (Figures.ttft is None).
MIN_SAMPLES = 5
# Counts kept for Redis (endpoint and bucket pairs): the window bounds them; this bounds them
# whatever the catalog's size, while Redis is unreachable.
MAX_PENDING_BUCKETS = 50_000
_REDIS_ERRORS = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class LiveSettings:
    prefix: str = DEFAULT_PREFIX
    window_seconds: float = 300.0
    flush_seconds: float = 1.0
    refresh_seconds: float = 2.0
    redis_seconds: float = 1.0  # the longest one background round trip may take
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    min_samples: int = MIN_SAMPLES

    @classmethod
    def from_config(cls, config: RouterConfig) -> LiveSettings:
        return cls(
            prefix=config.budget_prefix,
            window_seconds=config.stats_window_seconds,
            flush_seconds=config.stats_flush_seconds,
            refresh_seconds=config.stats_refresh_seconds,
            redis_seconds=max(1.0, config.redis_timeout_seconds),
            breaker=BreakerPolicy.from_config(config),
        )

    @property
    def settle_seconds(self) -> float:
        """How long after a bucket ends no router adds to it (a few flushes and a wait)."""
        return max(10.0, 4 * self.flush_seconds + 2 * self.redis_seconds)


class LiveStats(BackgroundTask):
    """The recorder (AttemptObserver) and the LiveView; see the module doc."""

    name = "live-endpoint-stats"

    def __init__(
        self,
        client: redis.Redis,
        settings: LiveSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        deadline = RedisDeadline(
            settings.redis_seconds,
            down_seconds=0,  # its own schedule paces it; the request path's memo is not touched
            on_failure=lambda op, cause: metrics.REDIS_FAILURES.labels(op, cause).inc(),
        )
        self.store = StatsStore(
            client, settings.prefix, settings.window_seconds, deadline, settings.settle_seconds
        )
        self._pending: dict[str, dict[int, Tally]] = {}  # not written to Redis yet
        self._pending_size = 0
        self._unconfirmed: dict[str, dict[int, Tally]] = {}  # written, not read back yet
        self._shared: dict[str, Series] = {}  # everyone's, as last read
        self._known: set[str] = set()  # endpoints with recent counts in Redis
        self._window_counts: dict[str, dict[int, tuple[int, int]]] = {}
        self._breakers: dict[str, Breaker] = {}
        self._figures: Mapping[str, Figures] = MappingProxyType({})
        self._exported: set[str] = set()
        self._failing = False
        self._wake = asyncio.Event()

    # -- LiveView ---------------------------------------------------------------------------

    def figures(self, endpoint_id: str) -> Figures | None:
        return self._figures.get(endpoint_id)

    def breaker(self, endpoint_id: str) -> str:
        found = self._breakers.get(endpoint_id)
        return CLOSED if found is None else found.state

    def allows(self, endpoint_id: str) -> bool:
        found = self._breakers.get(endpoint_id)
        return True if found is None else found.allows()

    def reopens_in(self, endpoint_id: str) -> float | None:
        """Seconds until an open breaker turns half-open (0 when half-open); None when closed:
        what a RetryInfo can say when every endpoint of a request is open."""
        found = self._breakers.get(endpoint_id)
        opening = None if found is None else found.opening
        return None if opening is None else max(0.0, opening.until - self._clock())

    # -- AttemptObserver (the request path: memory only) ------------------------------------

    def first_token(self, route: Route, seconds: float) -> None:
        tally = self._tally(route.endpoint_id)
        if tally is not None:
            tally.requests += 1
            index = TTFT_SCALE.index(seconds)
            tally.ttft[index] = tally.ttft.get(index, 0) + 1
        self._breaker_of(route.endpoint_id).succeeded()

    def failed(self, route: Route, error: UpstreamError, *, started: bool) -> None:
        kind = outcome(error)
        tally = self._tally(route.endpoint_id)
        if tally is not None:
            tally.requests += 0 if started else 1  # a started one was counted at its first token
            if kind != ANSWERED:
                tally.failures += 1
                tally.timeouts += int(kind == TIMEOUT)
                tally.rate_limited += int(kind == RATE_LIMITED)
        breaker = self._breaker_of(route.endpoint_id)
        if kind == ANSWERED:
            breaker.succeeded()
        elif kind == RATE_LIMITED and error.retry_after_seconds:
            breaker.cool_down(error.retry_after_seconds)
        else:
            breaker.failed()
        if breaker.unshared is not None:
            self._wake.set()  # tell the other routers now rather than at the next flush

    def finished(self, route: Route, completion_tokens: int, seconds: float) -> None:
        if completion_tokens < MIN_THROUGHPUT_TOKENS or seconds < MIN_THROUGHPUT_SECONDS:
            return
        tally = self._tally(route.endpoint_id)
        if tally is not None:
            index = THROUGHPUT_SCALE.index(completion_tokens / seconds)
            tally.throughput[index] = tally.throughput.get(index, 0) + 1

    def _tally(self, endpoint_id: str) -> Tally | None:
        bucket = bucket_of(self._clock())
        buckets = self._pending.setdefault(endpoint_id, {})
        found = buckets.get(bucket)
        if found is None:
            if self._pending_size >= MAX_PENDING_BUCKETS:
                metrics.LIVE_STATS_DROPPED.inc()
                return None
            found = buckets[bucket] = Tally()
            self._pending_size += 1
        return found

    def _breaker_of(self, endpoint_id: str) -> Breaker:
        found = self._breakers.get(endpoint_id)
        if found is None:
            found = self._breakers[endpoint_id] = Breaker(
                endpoint_id,
                self.settings.breaker,
                self._clock,
                lambda: self._breaker_window(endpoint_id),
            )
        return found

    def _breaker_window(self, endpoint_id: str) -> Window:
        """Attempts and failures per bucket in the breaker's window: everyone's as last read,
        plus this router's written since and not written yet."""
        first = bucket_of(self._clock() - self.settings.breaker.window_seconds)
        counts = {b: c for b, c in self._window_counts.get(endpoint_id, {}).items() if b >= first}
        for bucket, tally in self._pending.get(endpoint_id, {}).items():
            if bucket >= first:
                tried, failed = counts.get(bucket, (0, 0))
                counts[bucket] = (tried + tally.requests, failed + tally.failures)
        return counts

    # -- the background task ----------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the task and write what is left (bounded: one round trip's deadline)."""
        await super().stop()
        await self.flush()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = next_refresh = loop.time()
        while True:
            wait = max(0.0, min(next_flush, next_refresh) - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            now = loop.time()
            try:
                if now >= next_flush or self._wake.is_set():
                    self._wake.clear()
                    await self.flush()
                    next_flush = now + self.settings.flush_seconds
                if now >= next_refresh:
                    await self.refresh()
                    next_refresh = now + self.settings.refresh_seconds
            except Exception:  # a bug here must not end the figures for good: logged, retried
                log.exception("live endpoint stats round failed")
                next_flush = next_refresh = now + self.settings.refresh_seconds

    async def flush(self) -> bool:
        """Add this router's new counts to Redis and share its breakers' changes; on failure
        keep the counts for the next flush. False when Redis could not be reached."""
        now = self._clock()
        first = bucket_of(now - self.settings.window_seconds)
        batch, self._pending, self._pending_size = self._pending, {}, 0
        targets: dict[tuple[str, int], Tally] = {}
        for endpoint, buckets in batch.items():
            for bucket, tally in buckets.items():
                if bucket >= first:  # older counts have left the window: nothing to add to
                    key = (endpoint, self.store.target(bucket, now))
                    targets.setdefault(key, Tally()).add(tally)
        changes: list[tuple[str, Change, float]] = []
        half_open = self.settings.breaker.half_open_seconds
        for endpoint, breaker in self._breakers.items():
            change = breaker.unshared
            if isinstance(change, Opening):
                lifetime = change.until + half_open - now
                if lifetime <= 0:  # over before it could be written (Redis was down)
                    breaker.written(change, None)
                    continue
                changes.append((endpoint, change, lifetime))
            elif change is not None:
                changes.append((endpoint, change, 0.0))
        active = [e for e, breaker in self._breakers.items() if breaker.opening is not None]
        if not targets and not changes and not active:
            return True
        try:
            kept = await self.store.flush(targets, changes, active, now)
        except _REDIS_ERRORS as error:
            self._keep(batch, first)
            self._failed("flush", error)
            return False
        except BaseException:  # cancelled (shutting down): the final flush writes them
            self._keep(batch, first)
            raise
        for (endpoint, bucket), tally in targets.items():
            self._unconfirmed.setdefault(endpoint, {}).setdefault(bucket, Tally()).add(tally)
        for (endpoint, change, _), effective in zip(changes, kept, strict=True):
            self._breakers[endpoint].written(change, effective)
        self._recovered()
        return True

    def _keep(self, batch: dict[str, dict[int, Tally]], first: int) -> None:
        """Put counts that could not be written back, ahead of those recorded meanwhile."""
        newer, self._pending, self._pending_size = self._pending, {}, 0
        for source in (batch, newer):
            for endpoint, buckets in source.items():
                for bucket, tally in buckets.items():
                    if bucket < first:
                        continue
                    mine = self._pending.setdefault(endpoint, {})
                    if bucket not in mine:
                        if self._pending_size >= MAX_PENDING_BUCKETS:
                            metrics.LIVE_STATS_DROPPED.inc()
                            continue
                        mine[bucket] = Tally()
                        self._pending_size += 1
                    mine[bucket].add(tally)

    async def refresh(self) -> bool:
        """Read everyone's counts and breakers back and rebuild the figures. False when Redis
        could not be reached (the figures are rebuilt from what is held)."""
        now = self._clock()
        first, current = bucket_of(now - self.settings.window_seconds), bucket_of(now)
        endpoints = (
            self._known
            | set(self._pending)
            | {e for e, breaker in self._breakers.items() if breaker.opening is not None}
        )
        plan = {e: self._to_read(e, first, current) for e in endpoints}
        claims = self._claims(now)
        try:
            read = await self.store.read(plan, claims, now)
            new = {e: list(range(first, current + 1)) for e in read.endpoints if e not in plan}
            more = await self.store.read(new, (), now, index=False) if new else None
        except _REDIS_ERRORS as error:
            for _, breaker in self._wanting_probes():
                breaker.grant_local_probe()
            self._rebuild(now)
            self._failed("refresh", error)
            return False
        self._unconfirmed.clear()  # what this router wrote is in what it just read
        self._known = set(read.endpoints)
        for found in (read, more):
            if found is None:
                continue
            for (endpoint, bucket), tally in found.tallies.items():
                series = self._shared.setdefault(endpoint, Series())
                series.store(bucket, tally, self.store.final(bucket, now))
            for endpoint, opening in found.openings.items():
                if opening is not None or endpoint in self._breakers:
                    self._breaker_of(endpoint).adopt(opening)
        probes = self.settings.breaker.probes
        for (endpoint, epoch, _), count in zip(claims, read.claims, strict=True):
            if count <= probes:
                self._breakers[endpoint].grant_probe(epoch)
        self._rebuild(now)
        self._recovered()
        return True

    def _to_read(self, endpoint: str, first: int, current: int) -> list[int]:
        """The buckets of ``endpoint`` not cached as final, oldest first."""
        series = self._shared.get(endpoint)
        start = first
        if series is not None and series.final_upto is not None:
            start = max(first, series.final_upto + 1)
        return list(range(start, current + 1))

    def _wanting_probes(self) -> list[tuple[str, Breaker]]:
        return [(e, b) for e, b in self._breakers.items() if b.wants_probe]

    def _claims(self, now: float) -> list[tuple[str, int, float]]:
        """A probe token claim for each half-open breaker a request wanted."""
        claims = []
        half_open = self.settings.breaker.half_open_seconds
        for endpoint, breaker in self._wanting_probes():
            opening = breaker.opening
            if opening is not None:
                claims.append((endpoint, opening.epoch, opening.until + half_open - now))
        return claims

    # -- the snapshot -----------------------------------------------------------------------

    def _rebuild(self, now: float) -> None:
        """Figures over the window from everyone's counts (as last read) and this router's
        not read back yet; the breakers' window counts; the breakers judged; the gauges."""
        first = bucket_of(now - self.settings.window_seconds)
        breaker_first = bucket_of(now - self.settings.breaker.window_seconds)
        for endpoint, series in list(self._shared.items()):
            series.prune(first)
            if series.empty and endpoint not in self._known:
                del self._shared[endpoint]
        for buckets in self._unconfirmed.values():  # left there only while reads fail
            for bucket in [b for b in buckets if b < first]:
                del buckets[bucket]
        figures: dict[str, Figures] = {}
        window_counts: dict[str, dict[int, tuple[int, int]]] = {}
        for endpoint in set(self._shared) | set(self._unconfirmed) | set(self._pending):
            shared = self._shared.get(endpoint)
            total = shared.total() if shared is not None else Tally()
            recent = shared.since(breaker_first) if shared is not None else {}
            counts = {b: (t.requests, t.failures) for b, t in recent.items()}
            for bucket, tally in self._unconfirmed.get(endpoint, {}).items():
                if bucket >= first:
                    total.add(tally)
                if bucket >= breaker_first:
                    tried, failed = counts.get(bucket, (0, 0))
                    counts[bucket] = (tried + tally.requests, failed + tally.failures)
            for bucket, tally in self._pending.get(endpoint, {}).items():
                if bucket >= first:
                    total.add(tally)
            window_counts[endpoint] = counts
            if not total.empty:
                figures[endpoint] = self._figures_of(total)
        self._figures = MappingProxyType(figures)
        self._window_counts = window_counts
        for endpoint in window_counts:
            if endpoint in self._breakers or any(f for _, f in window_counts[endpoint].values()):
                self._breaker_of(endpoint).judge()
        self._export(figures)

    def _figures_of(self, total: Tally) -> Figures:
        minimum = self.settings.min_samples
        ttft = TTFT_SCALE.percentiles(total.ttft, minimum)
        throughput = THROUGHPUT_SCALE.percentiles(total.throughput, minimum)
        return Figures(
            window_seconds=self.settings.window_seconds,
            requests=total.requests,
            failures=total.failures,
            rate_limited=total.rate_limited,
            ttft=Percentiles(*ttft) if ttft is not None else None,
            throughput=Percentiles(*throughput) if throughput is not None else None,
            timeouts=total.timeouts,
        )

    def _export(self, figures: Mapping[str, Figures]) -> None:
        states = {e: b.state for e, b in self._breakers.items() if b.opening is not None}
        self._exported = stats_gauges.export(figures, states, self._exported)

    # -- Redis up and down ------------------------------------------------------------------

    def _failed(self, operation: str, error: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "live endpoint stats cannot reach redis; serving local figures, retrying",
                extra={"operation": operation, "error": type(error).__name__},
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("live endpoint stats reach redis again")
