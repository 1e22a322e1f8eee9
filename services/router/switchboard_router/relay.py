"""The attempt loop and the relay of one generation.

Endpoints are tried in plan order until one yields its first event; an error before that
moves on to the next endpoint, so the client sees one stream. After the first event the
generation is committed to that endpoint: deltas pass straight through, and at the end the
usage event is made durable before the final event is yielded. A generation cut short (the
client cancelled, or the upstream failed midway) is metered for what was generated, with
estimated usage when the provider reported none (:func:`.usage_estimate.estimated_usage`:
the provider's running counts where it sent them, hidden reasoning allowed for). An adapter's
``UsageReport`` marked ``estimated`` is such a running count, kept as a floor; the final,
unmarked one replaces it. A generation is tracked as in flight
(:mod:`.inflight`) from its first token until its event is published, so metering records it
if this router dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import Reservation
from switchboard_core.config import Secret
from switchboard_core.errors import NotFound, Unavailable
from switchboard_router import metrics
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
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
from switchboard_router.catalog_cache import Route
from switchboard_router.generation import Generation, Hold, new_generation_id
from switchboard_router.provider_metadata import merged_metadata
from switchboard_router.providers.base import Adapter, Target, UpstreamError, UpstreamStalled
from switchboard_router.providers.credentials import (
    ProviderCredentials,
    Withheld,
    withheld_error,
)
from switchboard_router.providers.guard import EventGuard
from switchboard_router.usage_estimate import cut_usage, plausible_prompt
from switchboard_router.usage_sanity import (
    checked_running,
    checked_usage,
    clean_finish,
)
from switchboard_router.usage_sink import UsageSink

if TYPE_CHECKING:
    from switchboard_router.inflight import InFlight

log = logging.getLogger(__name__)

STATUS_NAMES: dict[int, str] = {
    metering_pb2.GENERATION_STATUS_COMPLETED: "completed",
    metering_pb2.GENERATION_STATUS_CANCELLED: "cancelled",
    metering_pb2.GENERATION_STATUS_FAILED: "failed",
}


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


# How long shutdown waits for budget settles once the usage events are written.
SETTLE_DRAIN_SECONDS = 1.0


def _running(event: AdapterEvent) -> TypeGuard[UsageReport]:
    """An adapter's running usage counts (a ``UsageReport`` marked estimated, sent before the
    final one: Gemini's running ``usageMetadata``): not output, and not the final word."""
    return type(event) is UsageReport and event.estimated


class Relay:
    def __init__(
        self,
        adapters: Mapping[int, Adapter],
        credentials: ProviderCredentials,
        sink: UsageSink,
        admission: Admission,
        inflight: InFlight | None = None,
        observer: AttemptObserver | None = None,
    ) -> None:
        self._adapters = adapters
        self._observer = observer
        self._credentials = credentials
        self._sink = sink
        self._admission = admission
        self._inflight = inflight
        self._background: set[asyncio.Task[None]] = set()
        self._settles: set[asyncio.Task[None]] = set()

    def _key_for(self, route: Route, adapter: Adapter) -> Secret | Withheld:
        """The provider's key if its endpoint's host is declared for it (else why not)."""
        return self._credentials.lookup(
            route.provider_id, route.base_url, required=adapter.requires_credential(route.dialect)
        )

    @staticmethod
    def _target(route: Route, key: Secret, request: CompletionRequest) -> Target:
        thinks = request.reasoning is not None and request.reasoning.thinks
        return Target(
            route.provider_id,
            route.base_url,
            route.upstream_model,
            key,
            dialect=route.dialect,
            max_completion_tokens=route.max_completion_tokens,
            stall=route.thinking_stall if thinks else route.stall,
        )

    def _failed(self, route: Route, error: UpstreamError, *, started: bool) -> None:
        """Count an attempt's failure (stalls by phase too) and tell the observer."""
        metrics.UPSTREAM_ERRORS.labels(route.provider_id, error.reason).inc()
        if type(error) is UpstreamStalled:
            metrics.UPSTREAM_STALLS.labels(route.provider_id, error.phase).inc()
        if self._observer is not None:
            self._observer.failed(route, error, started=started)

    @staticmethod
    def _unsupported(request: CompletionRequest, route: Route, adapter: Adapter) -> frozenset[str]:
        """Parameters the request sets that this endpoint cannot honour.

        The catalog says what the endpoint supports (an empty list means unknown: trust the
        adapter); the adapter says what it can translate for the host's dialect.
        """
        supported = adapter.parameters(route.dialect)
        if route.supported_parameters:
            supported &= route.supported_parameters
        return request.set_parameters() - supported

    async def run(
        self,
        request: CompletionRequest,
        routes: list[Route],
        caller: Caller,
        *,
        timeout: float,
        streamed: bool,
        reservation: Reservation | None = None,
    ) -> AsyncIterator[RelayEvent]:
        """Try the routes in order and relay the first that answers. A ``reservation`` is
        settled to the generation's cost, or released when no generation started."""
        hold = Hold(reservation) if reservation is not None else None
        try:
            async for event in self._attempts(request, routes, caller, timeout, streamed, hold):
                yield event
        finally:
            self._settle(hold, Decimal(0))  # no-op when the generation settled it

    async def _attempts(
        self,
        request: CompletionRequest,
        routes: list[Route],
        caller: Caller,
        timeout: float,
        streamed: bool,
        hold: Hold | None,
    ) -> AsyncIterator[RelayEvent]:
        started = time.monotonic()
        deadline = started + timeout
        last_error: UpstreamError | None = None
        refused: NotFound | None = None
        tries = 0  # requests sent upstream so far
        withheld: list[Withheld] = []  # endpoints skipped: no credential, or undeclared host
        for route in routes:
            adapter = self._adapters.get(route.api_format)
            if adapter is None:
                log.warning("no adapter for endpoint", extra={"endpoint": route.endpoint_id})
                continue
            key = self._key_for(route, adapter)
            if isinstance(key, Withheld):
                withheld.append(key)
                continue
            unsupported = self._unsupported(request, route, adapter)
            if unsupported and request.provider.require_parameters:
                skipped = ", ".join(sorted(unsupported))
                refused = NotFound(
                    f"{route.endpoint_id} cannot honour: {skipped}"
                    " (provider.require_parameters is on)",
                    reason="NO_ENDPOINT_SUPPORTS_PARAMETERS",
                    metadata={"endpoint": route.endpoint_id},
                )
                continue
            attempt = tries
            tries += 1
            sent = request.without(unsupported)
            if hold is not None and "max_tokens" not in unsupported:
                sent = self._admission.bounded(sent, route)
            sent_at = time.monotonic()
            events = adapter.stream(
                sent,
                self._target(route, key, sent),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            # Inline rather than a wrapping generator: one less hop per event.
            guard = EventGuard(route.provider_id)
            prompt: PromptUsage | None = None
            running: UsageReport | None = None  # the provider's running counts, if any
            try:
                try:
                    first = await anext(events)
                    while True:  # usage counts are no output: the first token is to come
                        if type(first) is PromptUsage:
                            prompt = first if plausible_prompt(first) else prompt
                        elif _running(first):
                            running = first
                        else:
                            break
                        first = await anext(events)
                except (UpstreamError, StopAsyncIteration):
                    raise
                except Exception as crash:  # an adapter's bug: the provider's stream, unread
                    raise guard.failure(crash) from crash
            except UpstreamError as error:
                self._failed(route, error, started=False)
                log.info(
                    "upstream attempt failed",
                    extra={"endpoint": route.endpoint_id, "reason": error.reason},
                )
                last_error = error
                continue
            except StopAsyncIteration:
                continue
            if attempt:
                metrics.FALLBACKS.inc()
            generation = Generation(
                id=new_generation_id(),
                attempt=attempt,
                caller=caller,
                request=request,
                route=route,
                started=started,
                create_time=time.time(),
                streamed=streamed,
                first_event_at=time.monotonic(),
                hold=hold,
                prompt=prompt,
                sent_at=sent_at,
            )
            if running is not None:
                generation.running = checked_running(running, generation)
            metrics.TIME_TO_FIRST_TOKEN.labels(route.provider_id).observe(
                generation.first_event_at - started
            )
            if self._observer is not None:
                self._observer.first_token(route, generation.first_event_at - sent_at)
            yield Started(generation.id, route, generation.create_time, tuple(sorted(unsupported)))
            async for out in self._relay(generation, first, events, guard):
                yield out
            return
        if last_error is not None:
            raise last_error
        if refused is not None:
            raise refused
        if withheld:
            raise withheld_error(withheld)
        raise Unavailable("no endpoint could serve the request", reason="NO_ENDPOINT_AVAILABLE")

    async def _relay(
        self,
        generation: Generation,
        first: AdapterEvent,
        events: AsyncIterator[AdapterEvent],
        guard: EventGuard,
    ) -> AsyncIterator[RelayEvent]:
        status = metering_pb2.GENERATION_STATUS_CANCELLED
        done = False
        if self._inflight is not None:  # no round trip: written in the background
            self._inflight.track(generation)
        try:
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
            # Shielded: a cancel arriving now must not leave the event half-written.
            await asyncio.shield(
                self._spawn(self._sink.publish(generation.to_event(status, usage, cost, finish)))
            )
            done = True
            self._settle(generation.hold, cost)
            self._count(generation, status, usage)
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
                self._record_cut_short(generation, status)
            if not done:  # close the upstream now rather than when the generator is collected
                close = getattr(events, "aclose", None)
                if close is not None:
                    await close()

    def _record_cut_short(self, generation: Generation, status: int) -> None:
        """Meter a generation that did not finish, in the background: a cancelled task does
        not wait, and its output is counted with the model's tokenizer off the event loop
        (:func:`.usage_estimate.cut_usage`)."""
        self._spawn(self._meter_cut_short(generation, status, time.monotonic()))

    async def _meter_cut_short(self, generation: Generation, status: int, now: float) -> None:
        usage = await cut_usage(generation, now)
        cancelled = status == metering_pb2.GENERATION_STATUS_CANCELLED
        reason = Finish.CANCELLED if cancelled else Finish.ERROR
        cost = generation.cost(usage)
        event = generation.to_event(status, usage, cost, FinishEvent(reason, ""))
        self._count(generation, status, usage)
        self._settle(generation.hold, cost)
        await self._publish_quietly(event)

    def _settle(self, hold: Hold | None, cost: Decimal) -> None:
        """Settle once, in the background (a cancelled request cannot cut it short)."""
        if hold is None or hold.settled:
            return
        hold.settled = True
        self._spawn(self._admission.settle(hold.reservation, cost), self._settles)

    def _spawn(
        self, work: Coroutine[None, None, None], tracked: set[asyncio.Task[None]] | None = None
    ) -> asyncio.Task[None]:
        """Run usage writes as tasks the relay tracks, so a cancelled request cannot cut them."""
        tasks = self._background if tracked is None else tracked
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def _publish_quietly(self, event: metering_pb2.UsageEvent) -> None:
        with contextlib.suppress(Unavailable):  # the sink logged it, with the generation id
            await self._sink.publish(event)

    async def drain(self) -> None:
        """Wait for usage events of cut-short generations still being written, then give
        settles a moment; a settle still retrying then (Redis down) is dropped, and metering's
        sweep settles its reservation once this router has left (:mod:`.inflight`)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._settles:
            _, late = await asyncio.wait(self._settles, timeout=SETTLE_DRAIN_SECONDS)
            for task in late:
                task.cancel()

    @staticmethod
    def _count(generation: Generation, status: int, usage: UsageReport) -> None:
        provider = generation.route.provider_id
        metrics.GENERATIONS.labels(provider, STATUS_NAMES[status]).inc()
        metrics.TOKENS.labels(provider, "input").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(provider, "output").inc(usage.completion_tokens)
