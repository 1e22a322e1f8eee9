"""One completion, whichever door it came in by: the gRPC servicer (:mod:`.service`) and the
HTTP edge (:mod:`.edge`) both run it here. Validate, plan, check rate limits, reserve, relay.

The caller is authenticated before this runs (the gRPC interceptor, or the edge's own check
of the same key through the same :class:`~switchboard_core.auth.Authenticator`), so every
door shares the routing, limits, budgets and ledger of one router, with no extra hop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from switchboard_core.budget import Reservation
from switchboard_core.errors import Unavailable
from switchboard_router import genai_spans
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import NO_HEDGE, CompletionRequest, HedgePolicy, UsageReport
from switchboard_router.catalog_cache import CatalogCache, Route
from switchboard_router.context_window import within_context
from switchboard_router.endpoint_stats import NO_LIVE_VIEW, LiveView
from switchboard_router.hedging import HEDGE_OFF, HedgeDefaults, resolve
from switchboard_router.key_rules import allowed_plan
from switchboard_router.lifecycle import deprecation_notice, now_utc
from switchboard_router.metrics import DEPRECATED_REQUESTS
from switchboard_router.relay import Completed, Relay, RelayEvent, Started
from switchboard_router.requests import AnyCompletionRequest, parse_request
from switchboard_router.traffic import NOTHING_SENT, Ticket, TrafficControl

# Told the deprecation notice when the endpoint that started answering is deprecated (the
# gRPC door puts it in trailing metadata, the HTTP edge in a response header).
DeprecationHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready for the relay: whom for, what, where, how long, and what it holds (a
    spend reservation, a rate-limit ticket)."""

    caller: Caller
    request: CompletionRequest
    routes: list[Route]
    timeout: float
    reservation: Reservation | None
    ticket: Ticket | None
    hedge: HedgePolicy = NO_HEDGE  # resolved once: admission reserved for it, the relay runs it

    def finish(self, usage: UsageReport | None) -> None:
        """The request ended: its rate-limit ticket is given back with the final usage (None:
        the estimate stands). Never raises, never blocks."""
        if self.ticket is not None:
            self.ticket.finish(usage)


def note_deprecation(event: Started, hook: DeprecationHook | None) -> None:
    """When the endpoint that started answering is deprecated: the hook and the metric
    (lifecycle.py)."""
    if not event.route.lifecycle.deprecated(now_utc()):
        return
    route = event.route
    if hook is not None:
        hook(deprecation_notice(route.model_id, route.lifecycle))
    DEPRECATED_REQUESTS.labels(route.model_id).inc()


class Completions:
    def __init__(
        self,
        catalog: CatalogCache,
        relay: Relay,
        admission: Admission,
        max_request_seconds: float,
        traffic: TrafficControl | None = None,
        live: LiveView = NO_LIVE_VIEW,
        hedging: HedgeDefaults = HEDGE_OFF,
    ) -> None:
        self._catalog = catalog
        self._relay = relay
        self._admission = admission
        self._traffic = traffic  # rate limits; None: none are enforced (tests)
        self._max_seconds = max_request_seconds
        self._live = live  # live endpoint figures and breakers, for the plan's order
        self._hedging = hedging  # the router's default hedging

    @property
    def catalog(self) -> CatalogCache:
        return self._catalog

    async def prepare(
        self, request: AnyCompletionRequest, caller: Caller, remaining: float | None
    ) -> Prepared:
        """Validate (InvalidArgument naming each field), plan, admit; ``remaining``: the
        caller's own deadline in seconds, if it set one."""
        parsed = parse_request(request)
        if not self._catalog.loaded:
            raise Unavailable(
                "the model catalog is not loaded yet",
                reason="CATALOG_NOT_READY",
                retry_after_seconds=1.0,
            )
        # The key's allow-lists first: nothing is planned, reserved or sent that it may not use.
        snapshot = self._catalog.snapshot
        routes = within_context(
            parsed, allowed_plan(caller.rules, parsed, snapshot, live=self._live)
        )
        hedge = resolve(parsed, snapshot.hedges, self._hedging)  # request, model or router
        timeout = self._max_seconds if remaining is None else min(self._max_seconds, remaining)
        # Rate limits before the spend reservation: a request they refuse reserves nothing.
        ticket = None if self._traffic is None else await self._traffic.admit(caller, parsed)
        try:
            reservation = await self._admission.admit(caller, parsed, routes, hedge=hedge)
        except BaseException:  # refused (or cut short): nothing goes upstream
            if ticket is not None:
                ticket.finish(NOTHING_SENT)
            raise
        return Prepared(caller, parsed, routes, timeout, reservation, ticket, hedge)

    async def events(
        self,
        prepared: Prepared,
        *,
        streamed: bool,
        on_deprecated: DeprecationHook | None = None,
    ) -> AsyncGenerator[RelayEvent, None]:
        """The relay's events for a prepared request, in the completion's span when tracing
        is on (:mod:`.genai_spans`); its ticket is given back however the stream ends (done,
        failed, or the consumer went away)."""
        usage: UsageReport | None = None
        try:
            with genai_spans.completion(prepared.request, streamed) as span:
                async for event in self._relay.run(
                    prepared.request,
                    prepared.routes,
                    prepared.caller,
                    timeout=prepared.timeout,
                    streamed=streamed,
                    reservation=prepared.reservation,
                    hedge=prepared.hedge,
                ):
                    # Once each per stream, tested by type (the loop runs for every delta).
                    if type(event) is Started:
                        note_deprecation(event, on_deprecated)
                    elif type(event) is Completed:
                        usage = event.usage
                    if span is not None:
                        genai_spans.note(span, event)
                    yield event
        finally:
            prepared.finish(usage)
