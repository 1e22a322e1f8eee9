"""RouterService over gRPC: completions run through :class:`.completions.Completions` (shared
with the HTTP edge), the account reads through :class:`.account.AccountReads`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.auth import current_principal
from switchboard_router.account import AccountReads
from switchboard_router.auth import Caller, caller_of
from switchboard_router.canonical import ReasoningDelta
from switchboard_router.completions import Completions
from switchboard_router.lifecycle import DEPRECATED_HEADER
from switchboard_router.responses import WholeCompletion, stream_message

Context = grpc.aio.ServicerContext[Any, Any]


def _caller() -> Caller:
    return caller_of(current_principal())  # authenticated by the server's interceptor


def _trailer(context: Context) -> Callable[[str], None]:
    """The deprecation notice as the trailing metadata entry ``switchboard-deprecated``."""
    return lambda notice: context.set_trailing_metadata(((DEPRECATED_HEADER, notice),))


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, completions: Completions, account: AccountReads) -> None:
        self._completions = completions  # shared with the HTTP edge
        self._account = account  # the caller's own key, generations, usage; the model list

    async def StreamCompletion(
        self, request: router_pb2.StreamCompletionRequest, context: Context
    ) -> AsyncIterator[router_pb2.StreamCompletionResponse]:
        prepared = await self._completions.prepare(request, _caller(), context.time_remaining())
        async for event in self._completions.events(
            prepared, streamed=True, on_deprecated=_trailer(context)
        ):
            if type(event) is ReasoningDelta and not event.text:
                continue  # a signed block's seal: the final message carries the whole block
            yield stream_message(event)

    async def CreateCompletion(
        self, request: router_pb2.CreateCompletionRequest, context: Context
    ) -> router_pb2.CreateCompletionResponse:
        prepared = await self._completions.prepare(request, _caller(), context.time_remaining())
        whole = WholeCompletion()
        async for event in self._completions.events(
            prepared, streamed=False, on_deprecated=_trailer(context)
        ):
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
