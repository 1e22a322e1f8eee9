"""RouterService: authenticate, validate, plan, check rate limits, reserve, relay. The logic
lives in the modules it calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.auth import current_principal
from switchboard_core.budget import Reservation
from switchboard_core.errors import Unavailable
from switchboard_router.account import AccountReads
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller, caller_of
from switchboard_router.canonical import NO_HEDGE, CompletionRequest, HedgePolicy, UsageReport
from switchboard_router.catalog_cache import CatalogCache, Route
from switchboard_router.context_window import within_context
from switchboard_router.endpoint_stats import NO_LIVE_VIEW, LiveView
from switchboard_router.hedging import HEDGE_OFF, HedgeDefaults, resolve
from switchboard_router.key_rules import allowed_plan
from switchboard_router.lifecycle import DEPRECATED_HEADER, deprecation_notice, now_utc
from switchboard_router.metrics import DEPRECATED_REQUESTS
from switchboard_router.relay import Completed, Relay, RelayEvent, Started
from switchboard_router.requests import AnyCompletionRequest, parse_request
from switchboard_router.responses import WholeCompletion, stream_message
from switchboard_router.traffic import NOTHING_SENT, Ticket, TrafficControl

Context = grpc.aio.ServicerContext[Any, Any]


def note_deprecation(event: RelayEvent, context: Context) -> None:
    """When the endpoint that started answering is deprecated: the trailing metadata entry
    ``switchboard-deprecated`` and the metric (lifecycle.py)."""
    if not isinstance(event, Started) or not event.route.lifecycle.deprecated(now_utc()):
        return
    route = event.route
    notice = deprecation_notice(route.model_id, route.lifecycle)
    context.set_trailing_metadata(((DEPRECATED_HEADER, notice),))
    DEPRECATED_REQUESTS.labels(route.model_id).inc()


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


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        catalog: CatalogCache,
        relay: Relay,
        admission: Admission,
        max_request_seconds: float,
        account: AccountReads,
        traffic: TrafficControl | None = None,
        live: LiveView = NO_LIVE_VIEW,
        hedging: HedgeDefaults = HEDGE_OFF,
    ) -> None:
        self._account = account  # the caller's own key, generations, usage; the model list
        self._catalog = catalog
        self._relay = relay
        self._admission = admission
        self._traffic = traffic  # rate limits; None: none are enforced (tests)
        self._max_seconds = max_request_seconds
        self._live = live  # live endpoint figures and breakers, for the plan's order
        self._hedging = hedging  # the router's default hedging

    async def _prepare(self, request: AnyCompletionRequest, context: Context) -> Prepared:
        caller = caller_of(current_principal())  # authenticated by the server's interceptor
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
        remaining = context.time_remaining()
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

    def _relayed(self, prepared: Prepared, *, streamed: bool) -> AsyncIterator[RelayEvent]:
        return self._relay.run(
            prepared.request,
            prepared.routes,
            prepared.caller,
            timeout=prepared.timeout,
            streamed=streamed,
            reservation=prepared.reservation,
            hedge=prepared.hedge,
        )

    async def StreamCompletion(
        self, request: router_pb2.StreamCompletionRequest, context: Context
    ) -> AsyncIterator[router_pb2.StreamCompletionResponse]:
        prepared = await self._prepare(request, context)
        usage: UsageReport | None = None
        try:
            async for event in self._relayed(prepared, streamed=True):
                if isinstance(event, Completed):
                    usage = event.usage
                note_deprecation(event, context)
                yield stream_message(event)
        finally:  # however it ends: done, failed, or the client went away
            prepared.finish(usage)

    async def CreateCompletion(
        self, request: router_pb2.CreateCompletionRequest, context: Context
    ) -> router_pb2.CreateCompletionResponse:
        prepared = await self._prepare(request, context)
        usage: UsageReport | None = None
        whole = WholeCompletion()
        try:
            async for event in self._relayed(prepared, streamed=False):
                if isinstance(event, Completed):
                    usage = event.usage
                note_deprecation(event, context)
                whole.add(event)
        finally:
            prepared.finish(usage)
        return whole.result()

    async def GetKey(
        self, request: account_pb2.GetKeyRequest, context: Context
    ) -> account_pb2.GetKeyResponse:
        return await self._account.get_key(request, context)

    async def GetGeneration(
        self, request: account_pb2.GetGenerationRequest, context: Context
    ) -> account_pb2.GetGenerationResponse:
        return await self._account.get_generation(request, context)

    async def QueryUsage(
        self, request: account_pb2.QueryUsageRequest, context: Context
    ) -> account_pb2.QueryUsageResponse:
        return await self._account.query_usage(request, context)

    async def ListModels(
        self, request: account_pb2.ListModelsRequest, context: Context
    ) -> account_pb2.ListModelsResponse:
        return await self._account.list_models(request, context)
