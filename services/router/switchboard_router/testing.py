"""A relay for tests, in process: scripted adapters instead of providers, with real budgets and
a real usage outbox on the Redis a test gives it (as ``switchboard_catalog.testing`` gives a
real catalog). Nothing here is used by the router itself.

A :class:`ScriptedAdapter` plays one script per provider: canonical events, and the steps
between them that a provider's trouble takes (:class:`Delay`, :class:`Fail`, :class:`Stall`).
Scripts stand for what an adapter yields, not for a wire format: the adapters' own mapping is
tested on recorded and rendered streams (``tests/fakes``); here the subject is the relay, its
fallbacks, metering and settles::

    adapter = ScriptedAdapter({
        "down": [Fail(unavailable("down"))],
        "up": [TextDelta("hi"), UsageReport(3, 1), FinishEvent(Finish.STOP)],
    })
    async with scripted_relay(adapter, redis_client, prefix) as relay:
        events = await relay.run([scripted_route("down"), scripted_route("up")])
        (row,) = await relay.published(1)
        spend = await relay.spend()
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import grpc
import redis.asyncio as redis

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore, KeySpend, Limits, Reservation
from switchboard_core.pricing import PriceSheet
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    NO_HEDGE,
    AdapterEvent,
    CompletionRequest,
    HedgePolicy,
    Message,
    Role,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.providers.base import (
    DEFAULT_STALL,
    StallLimits,
    Target,
    UpstreamStalled,
    UpstreamUnavailable,
)
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.relay import Relay, RelayEvent
from switchboard_router.usage_sink import UsageSink

# The API format scripted routes name: the relay picks the scripted adapter by it.
SCRIPTED_FORMAT = catalog_pb2.API_FORMAT_OPENAI_CHAT
REQUEST = CompletionRequest(model="x/y", messages=(Message.of(Role.USER, "hi"),), max_tokens=64)
# The longest a test helper waits for what the relay writes in the background.
WAIT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds`` before the next step: a provider slow to answer or between chunks."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise ``error``: an :class:`~.providers.base.UpstreamError` (the provider's trouble),
    or any other exception (an adapter's bug)."""

    error: Exception


@dataclass(frozen=True, slots=True)
class Stall:
    """Go silent as a stalled provider does: after the target's stall limit (``first_byte``
    before any event, ``idle`` after one) the stream fails ``UpstreamStalled``, as the HTTP
    layer's stall guard makes a real adapter's do."""


Step = AdapterEvent | Delay | Fail | Stall


def unavailable(provider_id: str, status: int = 503) -> UpstreamUnavailable:
    """The error a provider's 5xx becomes."""
    return UpstreamUnavailable(
        f"{provider_id} answered {status}", provider_id=provider_id, status=status
    )


class ScriptedAdapter:
    """An :class:`~.providers.base.Adapter` whose every call to a provider plays that
    provider's script. ``calls`` lists the providers called, in order; ``closed`` those whose
    stream was closed or cancelled before its script ended (the relay hung up on it)."""

    def __init__(
        self,
        scripts: Mapping[str, Sequence[Step]],
        parameters: frozenset[str] = frozenset({"max_tokens", "temperature"}),
    ) -> None:
        self.scripts = dict(scripts)
        self.calls: list[str] = []
        self.closed: list[str] = []
        self._parameters = parameters

    def parameters(self, dialect: str) -> frozenset[str]:
        return self._parameters

    def requires_credential(self, dialect: str) -> bool:
        return False

    def stream(
        self, request: CompletionRequest, target: Target, *, timeout: float | None
    ) -> AsyncIterator[AdapterEvent]:
        self.calls.append(target.provider_id)
        return self._play(self.scripts[target.provider_id], target)

    async def _play(self, script: Sequence[Step], target: Target) -> AsyncIterator[AdapterEvent]:
        started = False
        try:
            for step in script:
                if isinstance(step, Delay):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Fail):
                    raise step.error
                elif isinstance(step, Stall):
                    phase = "idle" if started else "first_byte"
                    limit = target.stall.idle if started else target.stall.first_byte
                    await asyncio.sleep(limit)
                    raise UpstreamStalled(target.provider_id, phase, limit)
                else:
                    started = True
                    yield step
        except (GeneratorExit, asyncio.CancelledError):
            self.closed.append(target.provider_id)
            raise


def scripted_route(
    provider_id: str,
    *,
    prompt_price: str = "1",
    completion_price: str = "2",
    stall: StallLimits = DEFAULT_STALL,
) -> Route:
    """An endpoint of model ``x/y`` at ``provider_id``, served by the scripted adapter, at a
    flat price in USD per million tokens."""
    return Route(
        endpoint_id=f"{provider_id}:x/y",
        model_id="x/y",
        provider_id=provider_id,
        api_format=SCRIPTED_FORMAT,
        base_url="http://127.0.0.1:9/v1",  # never connected to
        dialect=provider_id,
        upstream_model="m",
        price=PriceSheet.flat(prompt_price, completion_price),
        context_length=8192,
        max_completion_tokens=1024,
        supported_parameters=frozenset(),
        stall=stall,
    )


@dataclass
class ScriptedRelay:
    """A relay over a :class:`ScriptedAdapter`, its budget store and usage outbox, and a
    caller with a daily limit (so every request holds a reservation)."""

    relay: Relay
    adapter: ScriptedAdapter
    admission: Admission
    store: BudgetStore
    client: redis.Redis
    stream: str
    caller: Caller
    reservations: list[Reservation] = field(default_factory=list)

    async def start(
        self,
        routes: list[Route],
        *,
        hedge: HedgePolicy = NO_HEDGE,
        request: CompletionRequest = REQUEST,
        timeout: float = 10.0,
    ) -> AsyncGenerator[RelayEvent, None]:
        """Admit the request (reserving for a hedge when there is one); its relay stream."""
        reservation = await self.admission.admit(self.caller, request, routes, hedge=hedge)
        if reservation is not None:
            self.reservations.append(reservation)
        return self.relay.run(
            request,
            routes,
            self.caller,
            timeout=timeout,
            streamed=True,
            reservation=reservation,
            hedge=hedge,
        )

    async def run(
        self,
        routes: list[Route],
        *,
        hedge: HedgePolicy = NO_HEDGE,
        into: list[RelayEvent] | None = None,
        request: CompletionRequest = REQUEST,
    ) -> list[RelayEvent]:
        """Admit and relay to the end; the events (also appended to ``into`` as they come)."""
        events: list[RelayEvent] = [] if into is None else into
        async for event in await self.start(routes, hedge=hedge, request=request):
            events.append(event)
        return events

    async def published(self, count: int) -> list[metering_pb2.UsageEvent]:
        """The usage events on the outbox, by attempt, once ``count`` are there (some are
        written in the background) or :data:`WAIT_SECONDS` passed."""
        await self.relay.drain()
        loop = asyncio.get_running_loop()
        until = loop.time() + WAIT_SECONDS
        while True:
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]], await self.client.xrange(self.stream)
            )
            rows = [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]) for _, f in entries]
            if len(rows) >= count or loop.time() >= until:
                return sorted(rows, key=lambda row: row.attempt)
            await asyncio.sleep(0.01)

    async def spend(self) -> KeySpend:
        """The caller's key's spend once nothing is reserved any more (settles run in the
        background), or as it stands after :data:`WAIT_SECONDS`."""
        await self.relay.drain()
        loop = asyncio.get_running_loop()
        until = loop.time() + WAIT_SECONDS
        while True:
            spend = await self.store.key_spend(self.caller.key_id, self.caller.account_id)
            if spend.reserved == 0 or loop.time() >= until:
                return spend
            await asyncio.sleep(0.01)


@asynccontextmanager
async def scripted_relay(
    adapter: ScriptedAdapter,
    client: redis.Redis,
    prefix: str,
    *,
    limits: Limits | None = None,
    **relay_options: Any,
) -> AsyncIterator[ScriptedRelay]:
    """A :class:`ScriptedRelay` whose keys all start with ``prefix`` (a unique suffix is added:
    each use has its own outbox and budgets); ``limits`` are the caller's (a daily $100 by
    default), ``relay_options`` go to :class:`~.relay.Relay` (gate, live, retry_budget...).
    Metering is never reached: the outbox on ``client`` takes every event."""
    base = f"{prefix}scripted-{uuid.uuid4().hex[:12]}:"
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # the sink's fallback: never reached
    store = BudgetStore(client, base + "budget:")
    admission = Admission(store, 4096, 60)
    stream = base + "usage"
    relay = Relay(
        {SCRIPTED_FORMAT: adapter},
        ProviderCredentials({}),
        UsageSink(client, stream, channel),
        admission,
        **relay_options,
    )
    caller = Caller(base + "key", base + "account", limits or Limits(daily=Decimal(100)))
    try:
        yield ScriptedRelay(relay, adapter, admission, store, client, stream, caller)
    finally:
        await relay.drain()
        await channel.close(None)
