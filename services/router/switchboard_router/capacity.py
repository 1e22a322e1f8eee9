"""Endpoint capacity caps (catalog ``EndpointCapacity``), shared by every router through Redis.

SCAFFOLD (the contract): the relay asks the gate for a slot before it sends an attempt to an
endpoint and gives the slot back when the attempt ends. An endpoint without caps never costs
a round trip. The Redis implementation comes in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from switchboard_router.catalog_cache import Route


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
