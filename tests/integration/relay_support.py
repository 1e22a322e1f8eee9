"""A relay over real HTTP to fake providers, a real Redis usage outbox and real budgets, with
the traffic controls it consults (an endpoint gate, a live view) as small in-memory stand-ins
whose state a test sets: for the hedging and traffic-control tests of the attempt loop."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import grpc
import redis.asyncio as redis

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore, KeySpend, Limits
from switchboard_core.config import Secret
from switchboard_core.pricing import PriceSheet
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import CompletionRequest, HedgePolicy, Message, Role
from switchboard_router.capacity import AtCapacity, EndpointSlot
from switchboard_router.catalog_cache import Route
from switchboard_router.endpoint_stats import CLOSED, OPEN, Figures
from switchboard_router.providers.base import UpstreamError
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.providers.http import create_session
from switchboard_router.providers.registry import build_adapters
from switchboard_router.relay import Relay, RelayEvent
from switchboard_router.usage_sink import UsageSink

OPENAI = catalog_pb2.API_FORMAT_OPENAI_CHAT
ANTHROPIC = catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES
PROVIDERS = ("slow", "fast", "other", "third", "anthropic")
REQUEST = CompletionRequest(
    model="x/y", messages=(Message.of(Role.USER, "tell me a story"),), max_tokens=64
)


def route(provider_id: str, base_url: str, api_format: int = OPENAI, price: str = "1") -> Route:
    return Route(
        endpoint_id=f"{provider_id}:x/y",
        model_id="x/y",
        provider_id=provider_id,
        api_format=api_format,
        base_url=base_url,
        dialect=provider_id,
        upstream_model="m",
        price=PriceSheet.flat(price, "2"),
        context_length=8192,
        max_completion_tokens=1024,
        supported_parameters=frozenset(),
    )


def hedge(delay: float, percentile: int = 0) -> HedgePolicy:
    return HedgePolicy(enabled=True, delay=delay, percentile=percentile)


class Observer:
    """The relay's attempt observer: what it was told, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def first_token(self, attempt: Route, seconds: float) -> None:
        self.seen.append((attempt.provider_id, "first_token"))

    def failed(self, attempt: Route, error: UpstreamError, *, started: bool) -> None:
        self.seen.append((attempt.provider_id, f"failed:{error.reason}"))

    def finished(self, attempt: Route, completion_tokens: int, seconds: float) -> None:
        self.seen.append((attempt.provider_id, "finished"))


@dataclass
class Gate:
    """An endpoint gate whose caps a test sets: an endpoint in ``full`` is at its cap until
    that monotonic time (``retry_after``: what it announces). Counts slots held."""

    full: dict[str, float] = field(default_factory=dict)  # endpoint -> full until (monotonic)
    retry_after: float = 1.0
    acquired: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def fill(self, endpoint_id: str, seconds: float = math.inf) -> None:
        self.full[endpoint_id] = time.monotonic() + seconds

    async def acquire(self, route: Route) -> EndpointSlot | AtCapacity:
        await asyncio.sleep(0)  # a real gate answers after a round trip
        if time.monotonic() < self.full.get(route.endpoint_id, 0.0):
            return AtCapacity(route.endpoint_id, "endpoint.max_concurrent", self.retry_after)
        self.acquired.append(route.endpoint_id)
        return EndpointSlot(route.endpoint_id, f"lease-{len(self.acquired)}")

    def release(self, slot: EndpointSlot) -> None:
        self.released.append(slot.endpoint_id)

    @property
    def held(self) -> int:
        return len(self.acquired) - len(self.released)


@dataclass
class Live:
    """A live view whose breakers and figures a test sets; ``asked`` lists ``allows`` calls."""

    breakers: dict[str, str] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=dict)  # half-open: probes left
    stats: dict[str, Figures] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def figures(self, endpoint_id: str) -> Figures | None:
        return self.stats.get(endpoint_id)

    def breaker(self, endpoint_id: str) -> str:
        return self.breakers.get(endpoint_id, CLOSED)

    def allows(self, endpoint_id: str) -> bool:
        self.asked.append(endpoint_id)
        state = self.breaker(endpoint_id)
        if state == OPEN:
            return False
        if state == CLOSED:
            return True
        left = self.probes.get(endpoint_id, 0)
        self.probes[endpoint_id] = max(0, left - 1)
        return left > 0


@dataclass
class Harness:
    relay: Relay
    admission: Admission
    store: BudgetStore
    client: redis.Redis
    stream: str
    observer: Observer
    caller: Caller

    async def run(
        self,
        routes: list[Route],
        policy: HedgePolicy | None = None,
        into: list[RelayEvent] | None = None,
        request: CompletionRequest = REQUEST,
    ) -> list[RelayEvent]:
        """Admit (reserving for the hedge when there is one) and relay; the events."""
        events: list[RelayEvent] = [] if into is None else into
        policy = policy or HedgePolicy()
        reservation = await self.admission.admit(self.caller, request, routes, hedge=policy)
        async for event in self.relay.run(
            request,
            routes,
            self.caller,
            timeout=30,
            streamed=True,
            reservation=reservation,
            hedge=policy,
        ):
            events.append(event)
        return events

    async def published(self, count: int) -> list[metering_pb2.UsageEvent]:
        """The usage events on the outbox, once ``count`` are there (written in the
        background), by attempt."""
        await self.relay.drain()
        rows: list[metering_pb2.UsageEvent] = []
        for _ in range(100):
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]], await self.client.xrange(self.stream)
            )
            rows = [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]) for _, f in entries]
            if len(rows) >= count:
                break
            await asyncio.sleep(0.02)
        return sorted(rows, key=lambda row: row.attempt)

    async def spend(self) -> KeySpend:
        """The key's spend once its reservation is settled (in the background)."""
        await self.relay.drain()
        spend = await self.store.key_spend(self.caller.key_id, self.caller.account_id)
        for _ in range(100):
            if spend.reserved == 0:
                break
            await asyncio.sleep(0.02)
            spend = await self.store.key_spend(self.caller.key_id, self.caller.account_id)
        return spend


@asynccontextmanager
async def harness(client: redis.Redis, prefix: str, **relay_options: Any) -> AsyncIterator[Harness]:
    """A relay whose usage goes to the outbox ``<prefix>usage`` and whose budgets live under
    ``prefix``; ``relay_options`` go to :class:`Relay` (gate, live, retry_budget...)."""
    session = create_session(UpstreamPolicy(["127.0.0.1"]))
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never reached: the outbox answers
    credentials = ProviderCredentials(
        {p: Secret("sk-test") for p in PROVIDERS}, {p: ["127.0.0.1"] for p in PROVIDERS}
    )
    store = BudgetStore(client, prefix + "budget:")
    admission = Admission(store, 4096, 60)
    stream = prefix + "usage"
    observer = Observer()
    relay = Relay(
        build_adapters(session),
        credentials,
        UsageSink(client, stream, channel),
        admission,
        observer=observer,
        **relay_options,
    )
    caller = Caller("key-hedge", "acct-hedge", Limits(daily=Decimal(100)))
    try:
        yield Harness(relay, admission, store, client, stream, observer, caller)
    finally:
        await relay.drain()
        await session.close()
        await channel.close(None)
