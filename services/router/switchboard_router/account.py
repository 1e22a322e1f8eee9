"""The calling key's own data, on the router's public port (OpenRouter's /key, /generation and
/models): ``RouterService.GetKey``, ``GetGeneration``, ``QueryUsage`` and ``ListModels``.

Nothing in these requests names a key or an account: the answer is about the key that
authenticated the call. For the first three the router asks metering, forwarding the caller's
own API key in :data:`~switchboard_core.rpc_owners.FORWARDED_AUTHORIZATION` (metering accepts
it from the router's service identity only), so metering authenticates the key again and
scopes the answer to its account itself: the router never sends an account id of its own
choosing. Each call to metering is bounded (:data:`METERING_TIMEOUT_SECONDS`, or less when the
client's deadline is nearer); metering unreachable is ``UNAVAILABLE`` with ``RetryInfo``.

``ListModels`` is served from the router's copy of the catalog (no catalog RPC): the models the
caller can use, each with only the endpoints the router routes to. A key with allow-lists sees
only the models and providers it may use (hidden, not marked: the list answers "what can this
key call"). An operator key with ``catalog:read`` sees every routable model. Each endpoint
carries its live statistics (``Endpoint.stats``: latency, throughput, uptime, 429s and the
circuit breaker, across every router; :mod:`.endpoint_stats`) when the router has any for it,
read from the router's local snapshot (no I/O).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2
from switchboard_core.auth import TenantPrincipal, current_principal
from switchboard_core.errors import (
    InvalidArgument,
    SwitchboardError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from switchboard_core.logs import request_id_var
from switchboard_core.paging import decode_token, encode_token, page_size
from switchboard_core.rpc_owners import FORWARDED_AUTHORIZATION
from switchboard_router.auth import MISSING_KEY, Caller, secret_of
from switchboard_router.catalog_cache import CatalogCache, Snapshot
from switchboard_router.endpoint_stats import CLOSED, NO_LIVE_VIEW, LiveView
from switchboard_router.key_rules import KeyRules

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Reply = TypeVar("Reply")

METERING_TIMEOUT_SECONDS = 5.0
# Metering's answers that are about the request or the caller's key, passed on as they are.
_PASSED_ON = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Metering down, slow, or the call given up: nothing to log, the caller may retry.
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
_SCOPES = {
    account_pb2.USAGE_SCOPE_UNSPECIFIED: "key",
    account_pb2.USAGE_SCOPE_KEY: "key",
    account_pb2.USAGE_SCOPE_ACCOUNT: "account",
}


def _tenant() -> Caller:
    principal = current_principal()
    if isinstance(principal, TenantPrincipal) and isinstance(principal.detail, Caller):
        return principal.detail
    raise Unauthenticated(MISSING_KEY, reason="CREDENTIALS_MISSING")


def metering_error(error: grpc.aio.AioRpcError) -> SwitchboardError:
    """What a failed call to metering means for the router's caller."""
    code = error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _invalid_argument(error)
    if code in _PASSED_ON:
        return from_rpc_error(error)
    if code in _UNREACHABLE:
        return Unavailable(
            "cannot reach the metering service right now",
            reason="METERING_UNAVAILABLE",
            retry_after_seconds=1.0,
        )
    # Metering refused the router itself, or failed: not the caller's doing.
    log.error("metering failed an account read", extra={"grpc_code": code.name})
    return Unavailable(
        "the metering service could not answer this read; try again later",
        reason="METERING_FAILED",
        retry_after_seconds=5.0,
    )


def _invalid_argument(error: grpc.aio.AioRpcError) -> InvalidArgument:
    """Metering's INVALID_ARGUMENT with its field violations."""
    violations: list[tuple[str, str]] = []
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations += [(v.field, v.description) for v in bad.field_violations]
    return InvalidArgument(violations or [("", error.details() or "invalid request")])


class AccountReads:
    """The handlers; :class:`~switchboard_router.service.RouterServicer` delegates to them."""

    def __init__(
        self,
        metering: grpc.aio.Channel,
        catalog: CatalogCache,
        timeout_seconds: float = METERING_TIMEOUT_SECONDS,
        live: LiveView = NO_LIVE_VIEW,
    ) -> None:
        self._metering = metering_pb2_grpc.MeteringServiceStub(metering)
        self._catalog = catalog
        self._timeout = timeout_seconds
        self._live = live

    async def _ask(
        self,
        method: Callable[..., Awaitable[Reply]],
        request: object,
        context: Context,
    ) -> Reply:
        """Call metering as the caller: their own key forwarded, bounded in time."""
        secret = secret_of(context.invocation_metadata())  # type: ignore[arg-type]
        metadata = [(FORWARDED_AUTHORIZATION, f"Bearer {secret}")]
        if request_id := request_id_var.get():
            metadata.append(("x-request-id", request_id))
        remaining = context.time_remaining()
        timeout = self._timeout if remaining is None else max(0.0, min(self._timeout, remaining))
        try:
            return await method(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise metering_error(error) from None

    async def get_key(
        self, request: account_pb2.GetKeyRequest, context: Context
    ) -> account_pb2.GetKeyResponse:
        caller = _tenant()
        # One after the other: both are quick, and a failure leaves nothing running.
        key = await self._ask(
            self._metering.GetApiKey, metering_pb2.GetApiKeyRequest(key_id=caller.key_id), context
        )
        balance = await self._ask(
            self._metering.GetBalance, metering_pb2.GetBalanceRequest(key_id=caller.key_id), context
        )
        return account_pb2.GetKeyResponse(
            api_key=key.api_key, spend=balance.key, account=balance.account
        )

    async def get_generation(
        self, request: account_pb2.GetGenerationRequest, context: Context
    ) -> account_pb2.GetGenerationResponse:
        _tenant()
        reply = await self._ask(
            self._metering.GetGeneration,
            metering_pb2.GetGenerationRequest(generation_id=request.generation_id),
            context,
        )
        return account_pb2.GetGenerationResponse(
            generation=reply.generation, tokens_per_second=reply.tokens_per_second
        )

    async def query_usage(
        self, request: account_pb2.QueryUsageRequest, context: Context
    ) -> account_pb2.QueryUsageResponse:
        caller = _tenant()
        scope = _SCOPES.get(request.scope)
        if scope is None:
            raise InvalidArgument({"scope": "USAGE_SCOPE_KEY or USAGE_SCOPE_ACCOUNT"})
        asked = metering_pb2.QueryUsageRequest(bucket=request.bucket)
        if scope == "account":
            asked.account_id = caller.account_id
        else:
            asked.key_id = caller.key_id
        for name in ("start_time", "end_time"):
            if request.HasField(name):
                getattr(asked, name).CopyFrom(getattr(request, name))
        reply = await self._ask(self._metering.QueryUsage, asked, context)
        return account_pb2.QueryUsageResponse(
            rows=reply.rows,
            total_requests=reply.total_requests,
            total_prompt_tokens=reply.total_prompt_tokens,
            total_completion_tokens=reply.total_completion_tokens,
            total_cost_usd=reply.total_cost_usd,
        )

    async def list_models(
        self, request: account_pb2.ListModelsRequest, context: Context | None = None
    ) -> account_pb2.ListModelsResponse:
        principal = current_principal()
        rules = KeyRules()
        if isinstance(principal, TenantPrincipal) and isinstance(principal.detail, Caller):
            rules = principal.detail.rules
        if not self._catalog.loaded:
            raise Unavailable(
                "the model catalog is not loaded yet",
                reason="CATALOG_NOT_READY",
                retry_after_seconds=1.0,
            )
        size = page_size(request.page_size)
        after = decode_token(request.page_token)
        models, more = usable_models(
            self._catalog.snapshot, rules, request.provider_id, after, size
        )
        for model in models:
            for endpoint in model.endpoints:
                with_stats(endpoint, self._live)
        next_token = encode_token(models[-1].id) if more and models else ""
        return account_pb2.ListModelsResponse(models=models, next_page_token=next_token)


# EndpointStats' millisecond fields are uint32.
_MAX_MS = 2**32 - 1


def _ms(seconds: float) -> int:
    return min(_MAX_MS, max(0, round(seconds * 1000)))


def with_stats(endpoint: catalog_pb2.Endpoint, live: LiveView) -> None:
    """Set ``endpoint.stats`` from the live view (left unset when there is nothing to say:
    no figures and a closed breaker)."""
    figures = live.figures(endpoint.id)
    breaker = live.breaker(endpoint.id)
    if figures is None and breaker == CLOSED:
        return
    stats = catalog_pb2.EndpointStats(breaker=breaker, uptime=1.0)
    if figures is not None:
        stats.window_seconds = round(figures.window_seconds)
        stats.requests = figures.requests
        stats.uptime = figures.uptime
        stats.rate_limited = figures.rate_limited
        if figures.ttft is not None:
            stats.ttft_p50_ms = _ms(figures.ttft.p50)
            stats.ttft_p90_ms = _ms(figures.ttft.p90)
        if figures.throughput is not None:
            stats.throughput_p50 = figures.throughput.p50
            stats.throughput_p90 = figures.throughput.p90
    endpoint.stats.CopyFrom(stats)


def usable_models(
    snapshot: Snapshot, rules: KeyRules, provider_id: str, after: str, size: int
) -> tuple[list[catalog_pb2.Model], bool]:
    """Up to ``size`` models after id ``after`` that the key can use (each with only the
    endpoints it may be routed to, of ``provider_id`` when given), and whether more follow."""
    found: list[catalog_pb2.Model] = []
    models = snapshot.models
    start = bisect.bisect_right([model.id for model in models], after) if after else 0
    for model in models[start:]:
        if not rules.allows_model(model.id):
            continue
        routed = {
            route.endpoint_id
            for route in snapshot.routes.get(model.id, ())
            if rules.allows_provider(route.provider_id)
        }
        endpoints = [e for e in model.endpoints if e.id in routed]
        if not endpoints or (
            provider_id and not any(e.provider_id == provider_id for e in endpoints)
        ):
            continue
        if len(found) == size:
            return found, True
        shown = catalog_pb2.Model()
        shown.CopyFrom(model)
        del shown.endpoints[:]
        shown.endpoints.extend(endpoints)
        found.append(shown)
    return found, False
