"""RouterService: authenticate, validate, plan, relay. The logic lives in the modules it calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.auth import current_principal
from switchboard_core.budget import Reservation
from switchboard_core.errors import Unavailable
from switchboard_router.account import AccountReads
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller, caller_of
from switchboard_router.canonical import (
    CompletionRequest,
)
from switchboard_router.catalog_cache import CatalogCache, Route
from switchboard_router.context_window import within_context
from switchboard_router.key_rules import allowed_plan
from switchboard_router.lifecycle import DEPRECATED_HEADER, deprecation_notice, now_utc
from switchboard_router.metrics import DEPRECATED_REQUESTS
from switchboard_router.relay import Relay, RelayEvent, Started
from switchboard_router.requests import AnyCompletionRequest, parse_request
from switchboard_router.responses import WholeCompletion, stream_message

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


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        catalog: CatalogCache,
        relay: Relay,
        admission: Admission,
        max_request_seconds: float,
        account: AccountReads,
    ) -> None:
        self._account = account  # the caller's own key, generations, usage; the model list
        self._catalog = catalog
        self._relay = relay
        self._admission = admission
        self._max_seconds = max_request_seconds

    async def _prepare(
        self, request: AnyCompletionRequest, context: Context
    ) -> tuple[Caller, CompletionRequest, list[Route], float, Reservation | None]:
        caller = caller_of(current_principal())  # authenticated by the server's interceptor
        parsed = parse_request(request)
        if not self._catalog.loaded:
            raise Unavailable(
                "the model catalog is not loaded yet",
                reason="CATALOG_NOT_READY",
                retry_after_seconds=1.0,
            )
        # The key's allow-lists first: nothing is planned, reserved or sent that it may not use.
        routes = within_context(parsed, allowed_plan(caller.rules, parsed, self._catalog.snapshot))
        remaining = context.time_remaining()
        timeout = self._max_seconds if remaining is None else min(self._max_seconds, remaining)
        reservation = await self._admission.admit(caller, parsed, routes)
        return caller, parsed, routes, timeout, reservation

    async def StreamCompletion(
        self, request: router_pb2.StreamCompletionRequest, context: Context
    ) -> AsyncIterator[router_pb2.StreamCompletionResponse]:
        caller, parsed, routes, timeout, reservation = await self._prepare(request, context)
        async for event in self._relay.run(
            parsed, routes, caller, timeout=timeout, streamed=True, reservation=reservation
        ):
            note_deprecation(event, context)
            yield stream_message(event)

    async def CreateCompletion(
        self, request: router_pb2.CreateCompletionRequest, context: Context
    ) -> router_pb2.CreateCompletionResponse:
        caller, parsed, routes, timeout, reservation = await self._prepare(request, context)
        whole = WholeCompletion()
        async for event in self._relay.run(
            parsed, routes, caller, timeout=timeout, streamed=False, reservation=reservation
        ):
            note_deprecation(event, context)
            whole.add(event)
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
