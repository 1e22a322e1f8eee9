"""Endpoint capacity caps (catalog ``EndpointCapacity``), shared by every router through Redis.

The relay asks the gate for a slot before it sends an attempt to an endpoint and gives the
slot back when the attempt ends. An endpoint without caps never costs a round trip.

:class:`RedisEndpointGate` checks an endpoint's two caps, requests per minute (GCRA: a
minute's worth at once, then one every 60/N s) and attempts in flight (a lease, renewed while
the attempt runs), in ONE script call on the endpoint's own slot
(:class:`switchboard_core.rate_limits.RateLimiter`, ``rl:{ep:<endpoint id>}:...``): both
admit and are charged, or neither is. At a cap it answers :class:`AtCapacity` with when to
try again (the GCRA's exact wait; :data:`BUSY_RETRY_SECONDS` for a full concurrency cap, as
nobody knows when an attempt in flight ends), for the relay to spill to the next endpoint or
wait up to ``SWITCHBOARD_ENDPOINT_QUEUE_SECONDS``. When Redis cannot be asked within the
router's Redis deadline the caps fail open (a slot without a lease), counted in
``switchboard_router_rate_limit_checks_total{scope="endpoint",outcome="unavailable"}`` and
logged at most every few seconds: the caps protect the provider's quota, and the provider's
own 429 is the backstop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from switchboard_core.rate_limits import LEASES, RateLimiter, Refusal
from switchboard_core.redis_client import RedisDeadline
from switchboard_router.catalog_cache import Route
from switchboard_router.leases import LeaseKeeper
from switchboard_router.traffic import Background, Checked, LimitCheck, new_lease

# The retry hint of a full concurrency cap: short, since the relay polls it while it queues.
BUSY_RETRY_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class EndpointSlot:
    """A held slot: ``lease`` is the concurrency lease to give back ("" when none was taken:
    an endpoint without a concurrency cap, or Redis unreachable and the cap failed open)."""

    endpoint_id: str
    lease: str = ""


@dataclass(frozen=True, slots=True)
class AtCapacity:
    """The endpoint is at a cap: ``limit`` names it ("endpoint.max_concurrent" or
    "endpoint.requests_per_minute"); ``retry_after`` is when a slot is expected (seconds)."""

    endpoint_id: str
    limit: str
    retry_after: float


class EndpointGate(Protocol):
    async def acquire(self, route: Route) -> EndpointSlot | AtCapacity:
        """A slot on ``route``'s endpoint, or why not. Never raises: when Redis cannot be
        reached the caps fail open (a slot without a lease), counted and logged."""
        ...

    def release(self, slot: EndpointSlot) -> None:
        """Give the slot back, in the background; never raises, never blocks."""
        ...


class OpenGate:
    """No caps at all (tests, and endpoints the catalog gives none)."""

    async def acquire(self, route: Route) -> EndpointSlot | AtCapacity:
        return EndpointSlot(route.endpoint_id)

    def release(self, slot: EndpointSlot) -> None:
        return None


OPEN_GATE = OpenGate()


class RedisEndpointGate:
    """The caps in Redis, shared by every router (see the module doc)."""

    def __init__(self, limiter: RateLimiter, leases: LeaseKeeper, deadline: RedisDeadline) -> None:
        self._limiter = limiter
        self._leases = leases
        self._background = Background(deadline)
        self._check = LimitCheck(
            "endpoint",
            limiter,
            leases,
            deadline,
            self._background,
            busy_retry=BUSY_RETRY_SECONDS,
        )

    async def acquire(self, route: Route) -> EndpointSlot | AtCapacity:
        cap = route.capacity
        if not cap.capped:
            return EndpointSlot(route.endpoint_id)
        limits = self._limiter.endpoint_limits(
            route.endpoint_id, cap.max_concurrent, cap.requests_per_minute
        )
        lease = new_lease() if cap.max_concurrent else ""
        checked = await self._check.run("endpoint_acquire", limits, lease, "endpoint_release")
        if isinstance(checked, Refusal):
            return AtCapacity(route.endpoint_id, checked.limit.name, checked.retry_after or 0.0)
        if checked is Checked.FAILED_OPEN:
            return EndpointSlot(route.endpoint_id)
        return EndpointSlot(route.endpoint_id, lease)

    def release(self, slot: EndpointSlot) -> None:
        if slot.lease:
            self._release(slot.endpoint_id, slot.lease)

    def _release(self, endpoint_id: str, lease: str) -> None:
        self._leases.drop(lease)
        # The endpoint's lease set (its key is all a release needs, whatever the cap now is).
        limits = [
            limit
            for limit in self._limiter.endpoint_limits(endpoint_id, 1, 0)
            if limit.kind == LEASES
        ]
        self._background.run("endpoint_release", lambda: self._limiter.finish(lease, limits))

    async def drain(self) -> None:
        """Wait (briefly) for the releases still in flight."""
        await self._background.drain()
