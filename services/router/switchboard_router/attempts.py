"""The attempts of one request: which endpoints it is sent to, when, and which answer it keeps.

Endpoints are taken in plan order. Before an attempt is sent to one (nothing here makes a
network call to an endpoint it passes over):

1. its **circuit** must not be open (:class:`~.endpoint_stats.LiveView`; skipped otherwise);
2. it takes a **capacity slot** from the endpoint gate (:mod:`.capacity`); an endpoint at a
   cap is passed over (a *spill*) for the next one;
3. an attempt beyond the request's first **withdraws from the retry budget**
   (:mod:`.retry_budget`); when it is empty no hedge starts and no fallback is tried: the
   request ends with the error it has;
4. the live view **allows** it (:meth:`~.endpoint_stats.LiveView.allows`, asked last, right
   before sending: it takes a half-open probe slot when the circuit is half-open).

The first attempt to produce its first event (text, reasoning, a tool call...; the provider's
early usage counts are not one) **wins**: the generation is committed to it and the client
sees its stream alone. An error before that moves on.

**Hedging** (:mod:`.hedging`): while exactly one attempt is in flight and it has not produced
its first event within its delay, the same request starts on the next eligible endpoint. At
most two attempts are ever in flight at once (one hedge), because:

- each extra attempt is another upstream request and another bill: a second hedge on the same
  request would triple the load of a slow request to save little (when two endpoints are slow
  at once the cause is usually the request, a long prompt or a thinking model, not the
  endpoint);
- the spend reservation must cover every attempt that may be metered: with two in flight it
  is the two dearest routes' worst cases (:func:`.admission.worst_case_cost`), a bound that
  holds however the race goes.

When one of the two fails, the other goes on; if it is already past its own delay, the next
endpoint starts beside it at once (a fallback that is also a hedge). When both fail, the
next endpoint starts as a plain fallback. When the race is decided, the other attempt is
cancelled at once: its reader is cancelled and its adapter stream closed, which closes the
upstream connection (``providers/http.post_stream`` drops an unfinished response), and its slot
is released. It is handed to ``lost`` to be metered (:mod:`.relay`); it is not a failure of its
endpoint (the observer is not told it failed). Attempts still in flight when the request ends
without a winner (the client cancelled, the deadline passed) are cancelled and metered the same
way.

**Capacity queue.** When no attempt is in flight and every endpoint left is at a cap, the
request waits for the soonest slot a cap announced (``AtCapacity.retry_after``), at most
``SWITCHBOARD_ENDPOINT_QUEUE_SECONDS``, and tries those endpoints once more; then it is
refused ``RESOURCE_EXHAUSTED``/``ENDPOINT_AT_CAPACITY`` with ``RetryInfo``. A hedge never
waits in the queue: it is a bet on spare capacity, not a claim on it.

**When nothing answers**, the error is, in order: the last upstream error when the retry
budget stopped the request; ``ENDPOINT_AT_CAPACITY`` when endpoints were still at a cap; the
last upstream error; ``CIRCUIT_OPEN`` (``UNAVAILABLE`` with a retry delay) when the endpoints
left were skipped as open; then the endpoints the request's parameters or the router's
credentials ruled out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

from switchboard_core.config import Secret
from switchboard_core.errors import NotFound, ResourceExhausted, SwitchboardError, Unavailable
from switchboard_router import metrics
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    HedgePolicy,
    PromptUsage,
    UsageReport,
)
from switchboard_router.capacity import AtCapacity, EndpointGate, EndpointSlot
from switchboard_router.catalog_cache import Route
from switchboard_router.endpoint_stats import OPEN, LiveView
from switchboard_router.hedging import hedge_delay
from switchboard_router.providers.base import Adapter, Target, UpstreamError
from switchboard_router.providers.credentials import (
    ProviderCredentials,
    Withheld,
    withheld_error,
)
from switchboard_router.providers.guard import EventGuard
from switchboard_router.retry_budget import RetryBudget
from switchboard_router.usage_estimate import plausible_prompt

log = logging.getLogger(__name__)

FIRST, FALLBACK, HEDGE = "first", "fallback", "hedge"
HEDGE_LOST, CANCELLED = "hedge_lost", "cancelled"  # why an attempt was abandoned


def running_counts(event: AdapterEvent) -> TypeGuard[UsageReport]:
    """An adapter's running usage counts (a ``UsageReport`` marked estimated, sent before the
    final one: Gemini's running ``usageMetadata``): not output, and not the final word."""
    return type(event) is UsageReport and event.estimated


@dataclass(frozen=True, slots=True)
class Upstreams:
    """What every request's attempts share: the adapters and credentials, the endpoint gate,
    the live view (breakers, figures), the retry budget (None: no budget) and the capacity
    queue's longest wait; ``circuit_retry_seconds``, the retry delay a client is given when
    every endpoint's circuit is open."""

    adapters: Mapping[int, Adapter]
    credentials: ProviderCredentials
    gate: EndpointGate
    live: LiveView
    budget: RetryBudget | None = None
    queue_seconds: float = 2.0
    circuit_retry_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class _Candidate:
    """An endpoint the request may be sent to: its adapter, credential and what it ignores."""

    route: Route
    adapter: Adapter
    key: Secret
    unsupported: frozenset[str]


@dataclass(eq=False, slots=True)
class Leg:
    """One attempt sent upstream, and what it said before its first event."""

    attempt: int  # upstream attempts of the request before this one
    kind: str  # FIRST, FALLBACK or HEDGE
    route: Route
    events: AsyncIterator[AdapterEvent]
    guard: EventGuard
    slot: EndpointSlot
    unsupported: tuple[str, ...]  # parameters unset before sending
    sent_at: float  # monotonic
    sent_wall: float  # wall clock: prices in force then bill it should it lose
    hedge_at: float = math.inf  # monotonic: when a hedge may start beside it
    hedged: bool = False  # a hedge was tried beside it
    prompt: PromptUsage | None = None  # the provider's early prompt counts
    running: UsageReport | None = None  # the provider's running counts
    first: AdapterEvent | None = None  # its first event
    first_at: float = 0.0  # monotonic
    error: UpstreamError | None = None
    reading: bool = False  # its reader ran: the request went (or was going) upstream
    # Reads its first event while a hedge may start beside it; None: read inline (no hedging)
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


Lost = Callable[[Leg, str], None]


class Attempts:
    """The attempts of one request (see the module docstring). :meth:`winner` returns the
    attempt the client gets, or raises why there is none."""

    def __init__(
        self,
        upstreams: Upstreams,
        request: CompletionRequest,
        routes: Iterable[Route],
        *,
        hedge: HedgePolicy,
        deadline: float,
        bound: Callable[[CompletionRequest, Route], CompletionRequest] | None,
        failed: Callable[[Route, UpstreamError], None],
        first_token: Callable[[Leg], None],
        lost: Lost,
    ) -> None:
        self._up = upstreams
        self._request = request
        self._plan = deque(routes)
        self._hedge = hedge
        self._deadline = deadline
        self._bound = bound  # the reservation's max_tokens bound, when one is held
        self._failed = failed
        self._first_token = first_token
        self._lost = lost
        self._legs: list[Leg] = []  # in flight
        self._tries = 0  # attempts sent
        self._last_error: UpstreamError | None = None
        self._stopped = False  # the retry budget refused a fallback
        self._queued = False  # the capacity queue was waited on (once per request)
        self._full: list[tuple[Route, AtCapacity]] = []
        self._open: list[Route] = []
        self._refused: NotFound | None = None
        self._withheld: list[Withheld] = []

    async def winner(self) -> Leg:
        """The attempt whose first event came first, every other one cancelled and handed to
        ``lost``; when this is cancelled (the client left), every attempt in flight is."""
        won: Leg | None = None
        try:
            while won is None:
                if not self._legs and await self._launch(hedge=False) is None:
                    raise self._final_error()
                won = await self._next_outcome()
            return won
        finally:
            abandoned = [leg for leg in self._legs if leg is not won]
            self._legs = []
            await self._abandon(abandoned, HEDGE_LOST if won is not None else CANCELLED)

    # --- the race ---------------------------------------------------------------------------

    async def _next_outcome(self) -> Leg | None:
        """Wait for an attempt's first event or error, or for the moment to hedge; the
        winner when there is one."""
        if len(self._legs) == 1 and self._legs[0].reader is None:
            # No hedge can start beside it: read inline, without a task or a wait per request.
            await _read_first(self._legs[0])
            return self._settle([self._legs[0]], racing=False)
        readers = [leg.reader for leg in self._legs if leg.reader is not None]
        done, _ = await asyncio.wait(
            readers, timeout=self._hedge_wait(), return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            await self._start_hedge()
            return None
        racing = len(self._legs) > 1
        finished = [leg for leg in self._legs if leg.reader is not None and leg.reader.done()]
        return self._settle(finished, racing=racing)

    def _settle(self, finished: list[Leg], *, racing: bool) -> Leg | None:
        """Take the attempts that ``finished`` reading (a first event, an error, or nothing)
        out of the race; the winner when one of them produced its first event."""
        for leg in finished:
            if leg.first is None:  # failed, or ended without a word
                self._legs.remove(leg)
                self._up.gate.release(leg.slot)
                if leg.error is not None:
                    self._failed(leg.route, leg.error)
                    self._last_error = leg.error
                for survivor in self._legs:
                    survivor.hedged = False  # may start the next endpoint beside it
        answered = [leg for leg in finished if leg.first is not None]
        for leg in answered:
            self._first_token(leg)
        if not answered:
            return None
        won = min(answered, key=lambda leg: leg.first_at)
        if racing:
            metrics.HEDGE_RACES.labels("hedge" if won.kind == HEDGE else "primary").inc()
        return won

    def _hedge_wait(self) -> float | None:
        """Seconds until a hedge may start beside the one attempt in flight; None: none will."""
        if len(self._legs) != 1 or not self._plan:
            return None
        leg = self._legs[0]
        if leg.hedged or leg.hedge_at == math.inf:
            return None
        return max(0.0, leg.hedge_at - time.monotonic())

    async def _start_hedge(self) -> None:
        self._legs[0].hedged = True
        leg = await self._launch(hedge=True)
        if leg is not None:
            metrics.HEDGES.labels(leg.route.provider_id).inc()

    async def _abandon(self, legs: list[Leg], cause: str) -> None:
        """Cancel ``legs`` at once: their readers, then their streams (which closes their
        connections); release their slots; meter the ones that were sent."""
        if not legs:
            return
        for leg in legs:
            if leg.reader is not None:
                leg.reader.cancel()
        readers = [leg.reader for leg in legs if leg.reader is not None]
        await asyncio.gather(*readers, return_exceptions=True)
        for leg in legs:
            close = getattr(leg.events, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # closing: its errors change nothing now, but get a line
                    log.debug("closing an abandoned attempt's stream failed", exc_info=True)
            self._up.gate.release(leg.slot)
            if leg.error is not None:  # it failed before it was cancelled
                self._failed(leg.route, leg.error)
            elif leg.reading:
                metrics.ABANDONED_ATTEMPTS.labels(leg.route.provider_id, cause).inc()
                self._lost(leg, cause)

    # --- sending ----------------------------------------------------------------------------

    async def _launch(self, *, hedge: bool) -> Leg | None:
        """Send the request to the next endpoint that can take it; None when none can. With
        nothing in flight, every endpoint left at a cap and the queue not waited on yet, wait
        for the soonest slot and try those endpoints once more."""
        if time.monotonic() >= self._deadline:  # out of time: each would time out at once
            return None
        leg = await self._next_leg(self._plan, hedge=hedge)
        if leg is not None or hedge or self._stopped or self._queued or not self._full:
            return leg
        self._queued = True
        soonest = min(refusal.retry_after for _, refusal in self._full)
        left = self._deadline - time.monotonic()
        await asyncio.sleep(max(0.0, min(soonest, self._up.queue_seconds, left)))
        waiting = deque(route for route, _ in self._full)
        self._full = []
        leg = await self._next_leg(waiting, hedge=False)
        metrics.ENDPOINT_QUEUE.labels("served" if leg is not None else "refused").inc()
        self._plan.extendleft(reversed(waiting))  # none left unless the budget stopped it
        return leg

    async def _next_leg(self, routes: deque[Route], *, hedge: bool) -> Leg | None:
        while routes:
            candidate = self._candidate(routes.popleft())
            if candidate is None:
                continue
            route = candidate.route
            if self._up.live.breaker(route.endpoint_id) == OPEN:
                self._skip_open(route)
                continue
            slot = await self._up.gate.acquire(route)
            if isinstance(slot, AtCapacity):
                self._full.append((route, slot))
                metrics.ENDPOINT_SPILLS.labels(route.provider_id, slot.limit).inc()
                continue
            if hedge and any(leg.reader is not None and leg.reader.done() for leg in self._legs):
                # The attempt in flight answered (or failed) while the slot was taken.
                self._up.gate.release(slot)
                routes.appendleft(route)
                return None
            if self._tries and not self._withdraw(hedge):
                self._up.gate.release(slot)
                routes.appendleft(route)
                return None
            if not self._up.live.allows(route.endpoint_id):  # half-open: no probe left
                if self._tries and self._up.budget is not None:
                    self._up.budget.refund()
                self._up.gate.release(slot)
                self._skip_open(route)
                continue
            return self._send(candidate, slot, hedge=hedge)
        return None

    def _candidate(self, route: Route) -> _Candidate | None:
        """``route`` with its adapter and credential, or None (and why) when it cannot be used."""
        adapter = self._up.adapters.get(route.api_format)
        if adapter is None:
            log.warning("no adapter for endpoint", extra={"endpoint": route.endpoint_id})
            return None
        key = self._up.credentials.lookup(
            route.provider_id, route.base_url, required=adapter.requires_credential(route.dialect)
        )
        if isinstance(key, Withheld):
            self._withheld.append(key)
            return None
        supported = adapter.parameters(route.dialect)
        if route.supported_parameters:  # the catalog's list; empty: unknown, trust the adapter
            supported &= route.supported_parameters
        unsupported = self._request.set_parameters() - supported
        if unsupported and self._request.provider.require_parameters:
            self._refused = NotFound(
                f"{route.endpoint_id} cannot honour: {', '.join(sorted(unsupported))}"
                " (provider.require_parameters is on)",
                reason="NO_ENDPOINT_SUPPORTS_PARAMETERS",
                metadata={"endpoint": route.endpoint_id},
            )
            return None
        return _Candidate(route, adapter, key, unsupported)

    def _withdraw(self, hedge: bool) -> bool:
        """Whether the retry budget lets one more attempt go; a fallback it refuses stops the
        request."""
        budget = self._up.budget
        if budget is None or budget.try_withdraw():
            return True
        metrics.RETRY_BUDGET_EXHAUSTED.labels(HEDGE if hedge else FALLBACK).inc()
        self._stopped = self._stopped or not hedge
        return False

    def _skip_open(self, route: Route) -> None:
        self._open.append(route)
        metrics.CIRCUIT_SKIPS.labels(route.provider_id).inc()

    def _send(self, candidate: _Candidate, slot: EndpointSlot, *, hedge: bool) -> Leg:
        route = candidate.route
        attempt = self._tries
        self._tries += 1
        if attempt == 0 and self._up.budget is not None:
            self._up.budget.deposit()
        sent = self._request.without(candidate.unsupported)
        if self._bound is not None and "max_tokens" not in candidate.unsupported:
            sent = self._bound(sent, route)
        thinks = sent.reasoning is not None and sent.reasoning.thinks
        target = Target(
            route.provider_id,
            route.base_url,
            route.upstream_model,
            candidate.key,
            dialect=route.dialect,
            max_completion_tokens=route.max_completion_tokens,
            stall=route.thinking_stall if thinks else route.stall,
        )
        now = time.monotonic()
        events = candidate.adapter.stream(sent, target, timeout=max(0.001, self._deadline - now))
        delay = hedge_delay(self._hedge, self._up.live, route.endpoint_id)
        leg = Leg(
            attempt=attempt,
            kind=HEDGE if hedge else (FALLBACK if attempt else FIRST),
            route=route,
            events=events,
            guard=EventGuard(route.provider_id),
            slot=slot,
            unsupported=tuple(sorted(candidate.unsupported)),
            sent_at=now,
            sent_wall=time.time(),
            hedge_at=math.inf if delay is None else now + delay,
        )
        if delay is not None:  # a hedge may start beside it: its first event is read in a task
            leg.reader = asyncio.get_running_loop().create_task(_read_first(leg))
        self._legs.append(leg)
        return leg

    # --- no answer --------------------------------------------------------------------------

    def _final_error(self) -> SwitchboardError:
        if self._stopped and self._last_error is not None:
            return self._last_error
        if self._full:
            route, soonest = min(self._full, key=lambda full: full[1].retry_after)
            return ResourceExhausted(
                f"every endpoint that could serve the request is at its capacity cap"
                f" ({route.endpoint_id}: {soonest.limit}); retry shortly",
                reason="ENDPOINT_AT_CAPACITY",
                metadata={"endpoint": route.endpoint_id, "limit": soonest.limit},
                retry_after_seconds=max(soonest.retry_after, 0.001),
            )
        if self._last_error is not None:
            return self._last_error
        if self._open:
            return Unavailable(
                "every endpoint that could serve the request is failing: their circuit"
                f" breakers are open ({', '.join(r.endpoint_id for r in self._open[:5])})",
                reason="CIRCUIT_OPEN",
                metadata={"endpoint": self._open[0].endpoint_id},
                retry_after_seconds=self._up.circuit_retry_seconds,
            )
        if self._refused is not None:
            return self._refused
        if self._withheld:
            return withheld_error(self._withheld)
        return Unavailable("no endpoint could serve the request", reason="NO_ENDPOINT_AVAILABLE")


async def _read_first(leg: Leg) -> None:
    """Read ``leg``'s stream up to its first event (keeping the provider's early and running
    counts on the way); its error, if it fails, is kept on the leg."""
    leg.reading = True
    events = leg.events
    try:
        try:
            event = await anext(events)
            while True:  # usage counts are no output: the first token is to come
                if type(event) is PromptUsage:
                    leg.prompt = event if plausible_prompt(event) else leg.prompt
                elif running_counts(event):
                    leg.running = event
                else:
                    break
                event = await anext(events)
        except (UpstreamError, StopAsyncIteration):
            raise
        except Exception as crash:  # an adapter's bug: the provider's stream, unread
            raise leg.guard.failure(crash) from crash
    except UpstreamError as error:
        leg.error = error
        return
    except StopAsyncIteration:  # ended without a word: nothing to relay, nothing to blame
        return
    leg.first = event
    leg.first_at = time.monotonic()
