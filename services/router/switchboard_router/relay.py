"""The relay of one request: its attempts, then the generation that answered.

Which endpoints the request is sent to, when, and which answer it keeps is
:mod:`.attempts`' (plan order, circuit breakers, endpoint capacity slots, the retry budget,
hedging); the client sees one stream. After the first event the generation is committed to
that endpoint: deltas pass straight through, and at the end the usage event is made durable
before the final event is yielded. A generation cut short (the client cancelled, or the
upstream failed midway) is metered for what was generated, with estimated usage when the
provider reported none (:func:`.usage_estimate.estimated_usage`: the provider's running
counts where it sent them, hidden reasoning allowed for). An adapter's ``UsageReport`` marked
``estimated`` is such a running count, kept as a floor; the final, unmarked one replaces it. A
generation is tracked as in flight (:mod:`.inflight`) from its first token until its event is
published, so metering records it if this router dies first.

An attempt abandoned before it won (a hedge's loser) is metered as its own attempt, and the
request's reservation settles to the sum of what its attempts cost: :mod:`.billing`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from switchboard_core import tracing
from switchboard_core.budget import Reservation
from switchboard_router import metrics
from switchboard_router.admission import Admission
from switchboard_router.attempts import Attempts, Leg, Upstreams
from switchboard_router.auth import Caller
from switchboard_router.billing import Billing, count, lost_generation_id
from switchboard_router.canonical import (
    NO_HEDGE,
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    HedgePolicy,
    LogprobsDelta,
    PromptUsage,
    ProviderMetadata,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    UsageReport,
    reasoning_blocks,
)
from switchboard_router.capacity import OPEN_GATE, EndpointGate
from switchboard_router.catalog_cache import Route
from switchboard_router.endpoint_stats import NO_LIVE_VIEW, LiveView
from switchboard_router.generation import Generation, Hold, new_generation_id
from switchboard_router.provider_metadata import merged_metadata
from switchboard_router.providers.base import Adapter, UpstreamError, UpstreamStalled
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.providers.guard import EventGuard
from switchboard_router.retry_budget import RetryBudget
from switchboard_router.usage_estimate import plausible_prompt
from switchboard_router.usage_sanity import (
    checked_running,
    checked_usage,
    clean_finish,
)
from switchboard_router.usage_sink import (
    CANCELLED,
    COMPLETED,
    FAILED,
    Status,
    UsageSink,
    usage_event,
)

if TYPE_CHECKING:
    from switchboard_router.inflight import InFlight

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Started:
    generation_id: str
    route: Route
    create_time: float
    # Parameters the endpoint does not support, unset before the request was sent.
    ignored_parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Completed:
    finish: FinishEvent  # choice 0's
    usage: UsageReport
    cost: Decimal
    # Per choice, the reasoning blocks to send back on the next turn (choices with some).
    reasoning: Mapping[int, tuple[ReasoningBlock, ...]] = field(default_factory=dict)
    # What the provider said beyond text and usage (bounded; see provider_metadata).
    metadata: Mapping[str, Any] | None = None
    # Every choice's finish when the request asked for n > 1, else empty.
    choices: Mapping[int, FinishEvent] = field(default_factory=dict)


RelayEvent = (
    Started | TextDelta | ReasoningDelta | RefusalDelta | ToolCallDelta | LogprobsDelta | Completed
)


@dataclass(frozen=True, slots=True)
class _Ask:
    """One request as every attempt of it shares it: who asked what, when, under which hold,
    the generation id it is served under and the completion span's traceparent."""

    request: CompletionRequest
    caller: Caller
    streamed: bool
    hold: Hold | None
    started: float  # monotonic: the request arrived
    generation_id: str
    trace_parent: str

    def generation(self, leg: Leg, generation_id: str, create_time: float) -> Generation:
        """``leg``'s generation, under ``generation_id``, priced at ``create_time``."""
        return Generation(
            id=generation_id,
            attempt=leg.attempt,
            caller=self.caller,
            request=self.request,
            route=leg.route,
            started=self.started,
            create_time=create_time,
            streamed=self.streamed,
            first_event_at=leg.first_at,
            hold=self.hold,
            prompt=leg.prompt,
            sent_at=leg.sent_at,
            trace_parent=self.trace_parent,
        )

    def lost(self, leg: Leg) -> Generation:
        """An attempt abandoned before it won, under its own id, dated when it was sent."""
        return self.generation(
            leg, lost_generation_id(self.generation_id, leg.attempt), leg.sent_wall
        )


class AttemptObserver(Protocol):
    """Told how each upstream attempt went, for live endpoint statistics and circuit
    breakers. It runs on the request path, so each call must be quick and must not block."""

    def first_token(self, route: Route, seconds: float) -> None:
        """The attempt's first event came ``seconds`` after it was sent."""

    def failed(self, route: Route, error: UpstreamError, *, started: bool) -> None:
        """The attempt failed: before its first event (``started`` False: the relay moves on)
        or after it (the stream was cut)."""

    def finished(self, route: Route, completion_tokens: int, seconds: float) -> None:
        """The generation completed: ``completion_tokens`` in ``seconds`` after the first
        event (its throughput)."""


class Relay:
    def __init__(
        self,
        adapters: Mapping[int, Adapter],
        credentials: ProviderCredentials,
        sink: UsageSink,
        admission: Admission,
        inflight: InFlight | None = None,
        observer: AttemptObserver | None = None,
        *,
        gate: EndpointGate = OPEN_GATE,
        live: LiveView = NO_LIVE_VIEW,
        retry_budget: RetryBudget | None = None,
        queue_seconds: float = 2.0,
        circuit_retry_seconds: float = 5.0,
    ) -> None:
        """``gate``: endpoint capacity caps; ``live``: breakers and live figures;
        ``retry_budget``: the router's budget for extra attempts (None: unbounded);
        ``queue_seconds``: the longest wait for an endpoint at its cap;
        ``circuit_retry_seconds``: the retry delay given when every endpoint's circuit is
        open."""
        self._upstreams = Upstreams(
            adapters,
            credentials,
            gate,
            live,
            retry_budget,
            queue_seconds=queue_seconds,
            circuit_retry_seconds=circuit_retry_seconds,
        )
        self._observer = observer
        self._admission = admission
        self._inflight = inflight
        self._billing = Billing(sink, admission)

    def _failed(self, route: Route, error: UpstreamError, *, started: bool) -> None:
        """Count an attempt's failure (stalls by phase too) and tell the observer."""
        metrics.UPSTREAM_ERRORS.labels(route.provider_id, error.reason).inc()
        if type(error) is UpstreamStalled:
            metrics.UPSTREAM_STALLS.labels(route.provider_id, error.phase).inc()
        if self._observer is not None:
            self._observer.failed(route, error, started=started)

    def _first_token(self, leg: Leg) -> None:
        if self._observer is not None:
            self._observer.first_token(leg.route, leg.first_at - leg.sent_at)

    async def run(
        self,
        request: CompletionRequest,
        routes: list[Route],
        caller: Caller,
        *,
        timeout: float,
        streamed: bool,
        reservation: Reservation | None = None,
        hedge: HedgePolicy = NO_HEDGE,
    ) -> AsyncGenerator[RelayEvent, None]:
        """Try the routes (:mod:`.attempts`: in order, hedged as ``hedge`` says) and relay the
        first that answers. A ``reservation`` is settled to the sum of the costs of the
        attempts metered (the generation, and a hedge's loser), or released when none was.

        One generator between the client and :meth:`_relay`'s per-delta loop (the servicer's
        ``async for`` reaches the loop through this one hop)."""
        ask = _Ask(
            request,
            caller,
            streamed,
            Hold(reservation) if reservation is not None else None,
            time.monotonic(),
            new_generation_id(),
            tracing.current_traceparent(),  # the completion's span ("" untraced)
        )
        try:
            leg = await self._winner(ask, routes, timeout, hedge)
            generation = self._commit(ask, leg)
            opening = Started(generation.id, leg.route, generation.create_time, leg.unsupported)
            relayed = self._relay(generation, opening, leg)
            try:
                async for out in relayed:
                    yield out
            finally:
                await relayed.aclose()  # a client that left: metered now, not when collected
                self._upstreams.gate.release(leg.slot)
        finally:
            self._billing.close(ask.hold)  # settles now when no attempt is still being metered

    async def _winner(
        self, ask: _Ask, routes: list[Route], timeout: float, hedge: HedgePolicy
    ) -> Leg:
        """The attempt that answered first (:class:`.attempts.Attempts`: eligibility, the race,
        the error when nothing answers); every attempt abandoned on the way is metered."""
        attempts = Attempts(
            self._upstreams,
            ask.request,
            routes,
            hedge=hedge,
            deadline=ask.started + timeout,
            bound=self._admission.bounded if ask.hold is not None else None,
            failed=lambda route, error: self._failed(route, error, started=False),
            first_token=self._first_token,
            lost=lambda leg, cause: self._billing.lost(ask.lost(leg), leg),
        )
        leg = await attempts.winner()
        if leg.attempt:
            metrics.FALLBACKS.inc()
        return leg

    def _commit(self, ask: _Ask, leg: Leg) -> Generation:
        """The generation the client gets: ``leg``'s, its cost expected by the request's hold,
        which starts no attempt any more."""
        generation = ask.generation(leg, ask.generation_id, time.time())
        if leg.running is not None:
            generation.running = checked_running(leg.running, generation)
        if ask.hold is not None:
            ask.hold.expect()  # this generation's cost
            ask.hold.close()  # no attempt starts any more
        metrics.TIME_TO_FIRST_TOKEN.labels(leg.route.provider_id).observe(
            generation.first_event_at - ask.started
        )
        return generation

    async def _relay(
        self, generation: Generation, opening: Started, leg: Leg
    ) -> AsyncGenerator[RelayEvent, None]:
        """Relay the winner's events (the hot path: one pass of the loop per delta), then
        make the usage event durable before the final event; meter a generation cut short."""
        assert leg.first is not None  # a winner has its first event
        events, guard = leg.events, leg.guard
        status = CANCELLED
        done = False
        if self._inflight is not None:  # no round trip: written in the background
            self._inflight.track(generation)
        try:
            yield opening  # within the try: a client gone by now still gets it metered
            event: AdapterEvent | None = leg.first
            hide_reasoning = generation.hides_reasoning
            while event is not None:
                if type(event) is TextDelta:
                    generation.text_chars += len(event.text)
                    generation.visible_texts.append(event.text)
                    if not generation.visible_at:
                        generation.visible_at = time.monotonic()
                    yield event
                elif type(event) is ReasoningDelta:
                    generation.text_chars += len(event.text)  # reasoning is billed output too
                    generation.reasoning_chars += len(event.text)
                    generation.reasoning_texts.append(event.text)
                    if event.format:  # to go back to the provider on the next turn
                        generation.signed.setdefault(event.choice, []).append(event)
                    if event.text and not hide_reasoning:
                        yield event
                    elif event.signature or event.redacted:  # a signed block's seal, in place
                        yield replace(event, text="") if event.text else event
                elif type(event) is ToolCallDelta:
                    generation.text_chars += len(event.name) + len(event.arguments)
                    generation.visible_texts += (event.name, event.arguments)
                    if not generation.visible_at:
                        generation.visible_at = time.monotonic()
                    guard.called(event)
                    yield event
                elif type(event) is RefusalDelta:
                    generation.text_chars += len(event.text)
                    generation.visible_texts.append(event.text)
                    if not generation.visible_at:
                        generation.visible_at = time.monotonic()
                    yield event
                elif type(event) is LogprobsDelta:
                    yield event
                elif type(event) is UsageReport:
                    if event.estimated:  # running counts: a floor should the stream be cut
                        generation.running = checked_running(event, generation) or (
                            generation.running
                        )
                    else:
                        generation.usage = checked_usage(event, generation)
                else:  # once or twice a stream: the prompt's counts, a finish, metadata
                    _note(generation, event, guard)
                try:
                    event = await anext(events, None)
                except UpstreamError:
                    raise
                except Exception as crash:  # an adapter's bug: the provider's fault, said so
                    raise guard.failure(crash) from crash
            status = COMPLETED  # from here a cut is no cut: the event is being written
            completed = await self._complete(generation)
            done = True
            yield completed
        except UpstreamError as error:
            status = FAILED
            self._failed(generation.route, error, started=True)
            raise
        finally:
            if not done:
                await self._cut(generation, status, events)

    async def _cut(
        self, generation: Generation, status: Status, events: AsyncIterator[AdapterEvent]
    ) -> None:
        """A generation that did not reach its final event: metered as cut short (unless its
        completed event is already being written), its upstream closed now rather than when
        the stream is collected."""
        if status != COMPLETED:
            self._billing.cut_short(generation, status)
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()

    async def _complete(self, generation: Generation) -> Completed:
        """The generation's final event, once its usage event is durable."""
        finishes = generation.finishes
        finish = finishes.get(0) or FinishEvent(Finish.STOP, "")
        usage = generation.final_usage()
        cost = generation.cost(usage)
        # Shielded: a cancel arriving now must not leave the event half-written (nor its
        # cost uncharged: the task charges it once the event is written).
        event = usage_event(generation, COMPLETED, usage, cost, finish)
        await asyncio.shield(self._billing.spawn(self._billing.completed(generation, event, cost)))
        count(generation, COMPLETED, usage)
        if self._observer is not None:
            self._observer.finished(
                generation.route,
                usage.completion_tokens,
                time.monotonic() - generation.first_event_at,
            )
        return Completed(
            finish,
            usage,
            cost,
            {choice: reasoning_blocks(pieces) for choice, pieces in generation.signed.items()},
            generation.metadata,
            finishes if (generation.request.n or 1) > 1 else {},
        )

    async def drain(self) -> None:
        """Wait for the usage writes and settles in flight (:meth:`.billing.Billing.drain`)."""
        await self._billing.drain()


def _note(generation: Generation, event: AdapterEvent, guard: EventGuard) -> None:
    """Keep what an event that is no output says (the relay's loop takes deltas and usage
    counts inline: they come with every chunk): the prompt's exact counts, a choice's finish,
    the provider's metadata."""
    if type(event) is PromptUsage:
        if plausible_prompt(event):  # else the prompt is estimated
            generation.prompt = event
    elif type(event) is FinishEvent:
        generation.finishes[event.choice] = clean_finish(guard.finish(event))
    elif type(event) is ProviderMetadata:
        generation.metadata = merged_metadata(generation.metadata, event.data)
