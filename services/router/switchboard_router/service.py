"""RouterService: authenticate, validate, plan, relay. The logic lives in the modules it calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.auth import current_principal
from switchboard_core.budget import Reservation
from switchboard_core.errors import Unavailable
from switchboard_core.money import format_usd
from switchboard_router.account import AccountReads
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller, caller_of
from switchboard_router.canonical import (
    CompletionRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from switchboard_router.catalog_cache import CatalogCache, Route
from switchboard_router.context_window import within_context
from switchboard_router.key_rules import allowed_plan
from switchboard_router.relay import Completed, Relay, Started
from switchboard_router.requests import AnyCompletionRequest, parse_request

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _usage(usage: UsageReport) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        estimated=usage.estimated,
    )


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
        response = router_pb2.StreamCompletionResponse
        delta = router_pb2.CompletionDelta
        async for event in self._relay.run(
            parsed, routes, caller, timeout=timeout, streamed=True, reservation=reservation
        ):
            if type(event) is TextDelta:
                yield response(delta=delta(text=event.text))
            elif type(event) is ReasoningDelta:
                yield response(delta=delta(reasoning=event.text))
            elif type(event) is ToolCallDelta:
                yield response(
                    delta=delta(
                        tool_call=router_pb2.ToolCallDelta(
                            index=event.index,
                            id=event.id,
                            name=event.name,
                            arguments_json=event.arguments,
                        )
                    )
                )
            elif type(event) is Started:
                yield response(
                    start=router_pb2.CompletionStart(
                        generation_id=event.generation_id,
                        model=event.route.model_id,
                        provider=event.route.provider_id,
                        endpoint_id=event.route.endpoint_id,
                        create_time=_timestamp(event.create_time),
                        ignored_parameters=event.ignored_parameters,
                    )
                )
            elif type(event) is Completed:
                yield response(
                    end=router_pb2.CompletionEnd(
                        finish_reason=int(event.finish.reason),  # type: ignore[arg-type]
                        usage=_usage(event.usage),
                        cost_usd=format_usd(event.cost),
                        native_finish_reason=event.finish.native_reason,
                    )
                )

    async def CreateCompletion(
        self, request: router_pb2.CreateCompletionRequest, context: Context
    ) -> router_pb2.CreateCompletionResponse:
        caller, parsed, routes, timeout, reservation = await self._prepare(request, context)
        reply = router_pb2.CreateCompletionResponse()
        parts: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, common_pb2.ToolCall] = {}
        async for event in self._relay.run(
            parsed, routes, caller, timeout=timeout, streamed=False, reservation=reservation
        ):
            if type(event) is TextDelta:
                parts.append(event.text)
            elif type(event) is ReasoningDelta:
                reasoning.append(event.text)
            elif type(event) is ToolCallDelta:
                call = calls.setdefault(event.index, common_pb2.ToolCall())
                call.id = call.id or event.id
                call.name = call.name or event.name
                call.arguments_json += event.arguments
            elif type(event) is Started:
                reply.generation_id = event.generation_id
                reply.model = event.route.model_id
                reply.provider = event.route.provider_id
                reply.endpoint_id = event.route.endpoint_id
                reply.create_time.CopyFrom(_timestamp(event.create_time))
                reply.ignored_parameters.extend(event.ignored_parameters)
            elif type(event) is Completed:
                reply.finish_reason = int(event.finish.reason)  # type: ignore[assignment]
                reply.native_finish_reason = event.finish.native_reason
                reply.usage.CopyFrom(_usage(event.usage))
                reply.cost_usd = format_usd(event.cost)
        reply.text = "".join(parts)
        reply.reasoning = "".join(reasoning)
        reply.tool_calls.extend(calls[i] for i in sorted(calls))
        return reply

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
