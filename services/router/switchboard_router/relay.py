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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from switchboard.metering.v1 import metering_pb2
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
from switchboard_router.usage_sink import UsageSink

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
    ) -> AsyncIterator[RelayEvent]:
        """Try the routes (:mod:`.attempts`: in order, hedged as ``hedge`` says) and relay the
        first that answers. A ``reservation`` is settled to the sum of the costs of the
        attempts metered (the generation, and a hedge's loser), or released when none was."""
        hold = Hold(reservation) if reservation is not None else None
        try:
            async for event in self._attempts(
                request, routes, caller, timeout, streamed, hold, hedge
            ):
                yield event
        finally:
            self._billing.close(hold)  # settles now when no attempt is still being metered

    async def _attempts(
        self,
        request: CompletionRequest,
        routes: list[Route],
        caller: Caller,
        timeout: float,
        streamed: bool,
        hold: Hold | None,
        hedge: HedgePolicy,
    ) -> AsyncIterator[RelayEvent]:
        started = time.monotonic()
        generation_id = new_generation_id()
        trace_parent = tracing.current_traceparent()  # the completion's span ("" untraced)

        def lost(leg: Leg, cause: str) -> None:
            self._billing.lost(
                Generation(
                    id=lost_generation_id(generation_id, leg.attempt),
                    attempt=leg.attempt,
                    caller=caller,
                    request=request,
                    route=leg.route,
                    started=started,
                    create_time=leg.sent_wall,
                    streamed=streamed,
                    first_event_at=leg.first_at,
                    hold=hold,
                    prompt=leg.prompt,
                    sent_at=leg.sent_at,
                    trace_parent=trace_parent,
                ),
                leg,
            )

        attempts = Attempts(
            self._upstreams,
            request,
            routes,
            hedge=hedge,
            deadline=started + timeout,
            bound=self._admission.bounded if hold is not None else None,
            failed=lambda route, error: self._failed(route, error, started=False),
            first_token=self._first_token,
            lost=lost,
        )
        leg = await attempts.winner()
        if leg.attempt:
            metrics.FALLBACKS.inc()
        assert leg.first is not None  # a winner has its first event
        generation = Generation(
            id=generation_id,
            attempt=leg.attempt,
            caller=caller,
            request=request,
            route=leg.route,
            started=started,
            create_time=time.time(),
            streamed=streamed,
            first_event_at=leg.first_at,
            hold=hold,
            prompt=leg.prompt,
            sent_at=leg.sent_at,
            trace_parent=trace_parent,
        )
        if leg.running is not None:
            generation.running = checked_running(leg.running, generation)
        if hold is not None:
            hold.expect()  # this generation's cost
            hold.close()  # no attempt starts any more
        metrics.TIME_TO_FIRST_TOKEN.labels(leg.route.provider_id).observe(
            generation.first_event_at - started
        )
        opening = Started(generation.id, leg.route, generation.create_time, leg.unsupported)
        try:
            async for out in self._relay(generation, opening, leg.first, leg.events, leg.guard):
                yield out
        finally:
            self._upstreams.gate.release(leg.slot)

    async def _relay(
        self,
        generation: Generation,
        opening: Started,
        first: AdapterEvent,
        events: AsyncIterator[AdapterEvent],
        guard: EventGuard,
    ) -> AsyncIterator[RelayEvent]:
        status = metering_pb2.GENERATION_STATUS_CANCELLED
        done = False
        if self._inflight is not None:  # no round trip: written in the background
            self._inflight.track(generation)
        try:
            yield opening  # within the try: a client gone by now still gets it metered
            event: AdapterEvent | None = first
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
                elif type(event) is PromptUsage:
                    if plausible_prompt(event):  # else the prompt is estimated
                        generation.prompt = event
                elif type(event) is FinishEvent:
                    generation.finishes[event.choice] = clean_finish(guard.finish(event))
                elif type(event) is ProviderMetadata:
                    generation.metadata = merged_metadata(generation.metadata, event.data)
                try:
                    event = await anext(events, None)
                except UpstreamError:
                    raise
                except Exception as crash:  # an adapter's bug: the provider's fault, said so
                    raise guard.failure(crash) from crash
            finishes = generation.finishes
            finish = finishes.get(0) or FinishEvent(Finish.STOP, "")
            usage = generation.final_usage()
            cost = generation.cost(usage)
            status = metering_pb2.GENERATION_STATUS_COMPLETED
            # Shielded: a cancel arriving now must not leave the event half-written (nor its
            # cost uncharged: the task charges it once the event is written).
            event_out = generation.to_event(status, usage, cost, finish)
            await asyncio.shield(
                self._billing.spawn(self._billing.completed(generation, event_out, cost))
            )
            done = True
            count(generation, status, usage)
            if self._observer is not None:
                self._observer.finished(
                    generation.route,
                    usage.completion_tokens,
                    time.monotonic() - generation.first_event_at,
                )
            yield Completed(
                finish,
                usage,
                cost,
                {choice: reasoning_blocks(pieces) for choice, pieces in generation.signed.items()},
                generation.metadata,
                finishes if (generation.request.n or 1) > 1 else {},
            )
        except UpstreamError as error:
            status = metering_pb2.GENERATION_STATUS_FAILED
            self._failed(generation.route, error, started=True)
            raise
        finally:
            if not done and status != metering_pb2.GENERATION_STATUS_COMPLETED:
                self._billing.cut_short(generation, status)
            if not done:  # close the upstream now rather than when the generator is collected
                close = getattr(events, "aclose", None)
                if close is not None:
                    await close()

    async def drain(self) -> None:
        """Wait for the usage writes and settles in flight (:meth:`.billing.Billing.drain`)."""
        await self._billing.drain()
