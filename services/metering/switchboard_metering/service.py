"""The MeteringService gRPC handlers: request validation, then calls into keys and ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.auth import OperatorPrincipal, current_principal
from switchboard_core.errors import InvalidArgument
from switchboard_core.key_changes import account_subject, key_subject, operator_subject
from switchboard_core.rate_limits import RateLimits, rate_limit_problems
from switchboard_metering.account_limits import AccountLimits
from switchboard_metering.budgets import Budgets
from switchboard_metering.keys import KeyStore, parse_limits
from switchboard_metering.ledger import Ledger
from switchboard_metering.operators import OperatorKeyStore
from switchboard_metering.tenant_scope import TenantScope

Context = grpc.aio.ServicerContext[Any, Any]

MAX_EVENTS_PER_REQUEST = 1000
DEFAULT_USAGE_WINDOW = timedelta(days=30)
_BUCKETS = {
    metering_pb2.TIME_BUCKET_UNSPECIFIED: "day",
    metering_pb2.TIME_BUCKET_DAY: "day",
    metering_pb2.TIME_BUCKET_HOUR: "hour",
}


def _time(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument({field: "not a valid timestamp"}) from None


def usage_range(
    request: metering_pb2.QueryUsageRequest, now: datetime
) -> tuple[datetime, datetime]:
    """``[start, end)``: end defaults to now, start to 30 days before end."""
    end = _time(request.end_time, "end_time") if request.HasField("end_time") else now
    if request.HasField("start_time"):
        start = _time(request.start_time, "start_time")
    elif end - datetime.min.replace(tzinfo=UTC) < DEFAULT_USAGE_WINDOW:
        raise InvalidArgument({"end_time": "too early: give a start_time"})
    else:
        start = end - DEFAULT_USAGE_WINDOW
    if start >= end:
        raise InvalidArgument({"start_time": "must be before end_time"})
    return start, end


async def _no_announcement(subject: str) -> None:
    return None


def requested_rate_limits(request: metering_pb2.SetKeyLimitsRequest) -> RateLimits | None:
    """The key's new rate limits; None when the request keeps them (``rate_limits`` unset).
    INVALID_ARGUMENT names every bad field, the spend limits' too: nothing is written until
    the whole request is known to be good."""
    if not request.HasField("rate_limits"):
        return None
    problems = rate_limit_problems(request.rate_limits, "rate_limits")
    if problems:
        try:
            parse_limits(request.limits)
        except InvalidArgument as bad:
            problems = bad.violations + problems
        raise InvalidArgument(problems)
    return RateLimits.from_proto(request.rate_limits)


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(
        self,
        keys: KeyStore,
        ledger: Ledger,
        budgets: Budgets,
        operators: OperatorKeyStore,
        announce: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._keys = keys
        self._ledger = ledger
        self._budgets = budgets
        self._operators = operators
        self._account_limits = AccountLimits(keys.pool)
        # An API key the router forwards reads only its own account (operators: anything).
        self._scope = TenantScope(keys)
        # Tells routers a key changed, so that they drop their cached copy at once.
        self._announce = announce or _no_announcement

    async def CreateApiKey(
        self, request: metering_pb2.CreateApiKeyRequest, context: Context
    ) -> metering_pb2.CreateApiKeyResponse:
        expires_at = (
            _time(request.expire_time, "expire_time") if request.HasField("expire_time") else None
        )
        key, secret = await self._keys.create(
            request.account_id,
            request.name,
            expires_at=expires_at,
            allowed_models=request.allowed_models,
            allowed_providers=request.allowed_providers,
        )
        return metering_pb2.CreateApiKeyResponse(api_key=key, secret=secret)

    async def GetApiKey(
        self, request: metering_pb2.GetApiKeyRequest, context: Context
    ) -> metering_pb2.GetApiKeyResponse:
        await self._scope.key(request.key_id)
        return metering_pb2.GetApiKeyResponse(api_key=await self._keys.get(request.key_id))

    async def ListApiKeys(
        self, request: metering_pb2.ListApiKeysRequest, context: Context
    ) -> metering_pb2.ListApiKeysResponse:
        keys, next_token = await self._keys.list_page(
            request.account_id, request.page_size, request.page_token
        )
        return metering_pb2.ListApiKeysResponse(api_keys=keys, next_page_token=next_token)

    async def RevokeApiKey(
        self, request: metering_pb2.RevokeApiKeyRequest, context: Context
    ) -> metering_pb2.RevokeApiKeyResponse:
        key = await self._keys.revoke(request.key_id)
        await self._announce(key_subject(key.id))
        return metering_pb2.RevokeApiKeyResponse(api_key=key)

    async def VerifyApiKey(
        self, request: metering_pb2.VerifyApiKeyRequest, context: Context
    ) -> metering_pb2.VerifyApiKeyResponse:
        return metering_pb2.VerifyApiKeyResponse(api_key=await self._keys.verify(request.secret))

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: Context
    ) -> metering_pb2.RecordUsageResponse:
        if len(request.events) > MAX_EVENTS_PER_REQUEST:
            raise InvalidArgument({"events": f"at most {MAX_EVENTS_PER_REQUEST} per request"})
        swept = {
            f"events[{i}].swept": "only metering's sweep records swept events"
            for i, event in enumerate(request.events)
            if event.swept
        }
        if swept:  # a swept row is provisional: a caller must not make its own so
            raise InvalidArgument(swept)
        result = await self._ledger.record(request.events, source="rpc")
        return metering_pb2.RecordUsageResponse(
            recorded_count=result.recorded + result.corrected,
            duplicate_count=result.duplicates,
        )

    async def GetGeneration(
        self, request: metering_pb2.GetGenerationRequest, context: Context
    ) -> metering_pb2.GetGenerationResponse:
        return await self._scope.generation(request.generation_id, self._ledger.get_generation)

    async def QueryUsage(
        self, request: metering_pb2.QueryUsageRequest, context: Context
    ) -> metering_pb2.QueryUsageResponse:
        if bool(request.key_id) == bool(request.account_id):
            raise InvalidArgument({"key_id": "give key_id or account_id (one of them)"})
        bucket = _BUCKETS.get(request.bucket)
        if bucket is None:
            raise InvalidArgument({"bucket": "TIME_BUCKET_HOUR or TIME_BUCKET_DAY"})
        start, end = usage_range(request, datetime.now(UTC))
        self._scope.account(request.account_id)
        await self._scope.key(request.key_id)
        return await self._ledger.query_usage(
            request.key_id, start, end, bucket, account_id=request.account_id
        )

    async def SetKeyLimits(
        self, request: metering_pb2.SetKeyLimitsRequest, context: Context
    ) -> metering_pb2.SetKeyLimitsResponse:
        rate_limits = requested_rate_limits(request)
        # The rate limits are checked already; Budgets checks the spend limits (and their
        # bound) before writing both in one statement.
        key = await self._budgets.set_limits(request.key_id, request.limits, rate_limits)
        await self._announce(key_subject(key.id))
        return metering_pb2.SetKeyLimitsResponse(api_key=key)

    async def SetAccountLimits(
        self, request: metering_pb2.SetAccountLimitsRequest, context: Context
    ) -> metering_pb2.SetAccountLimitsResponse:
        limits = await self._account_limits.set(request.account_id, request.rate_limits)
        await self._announce(account_subject(request.account_id))
        return metering_pb2.SetAccountLimitsResponse(
            account_id=request.account_id, rate_limits=limits.to_proto()
        )

    async def AddCredits(
        self, request: metering_pb2.AddCreditsRequest, context: Context
    ) -> metering_pb2.AddCreditsResponse:
        balance, duplicate = await self._budgets.add_credits(
            request.account_id, request.amount_usd, request.note, request.request_id
        )
        if not duplicate:  # the account may have just become prepaid
            await self._announce(account_subject(balance.account_id))
        return metering_pb2.AddCreditsResponse(balance=balance, duplicate=duplicate)

    async def GetBalance(
        self, request: metering_pb2.GetBalanceRequest, context: Context
    ) -> metering_pb2.GetBalanceResponse:
        self._scope.account(request.account_id)
        await self._scope.key(request.key_id)
        return await self._budgets.balance(request)

    async def CreateOperatorKey(
        self, request: metering_pb2.CreateOperatorKeyRequest, context: Context
    ) -> metering_pb2.CreateOperatorKeyResponse:
        granter = current_principal()
        expires_at = (
            _time(request.expire_time, "expire_time") if request.HasField("expire_time") else None
        )
        key, secret = await self._operators.create(
            request.name,
            list(request.scopes),
            expires_at=expires_at,
            granter=granter if isinstance(granter, OperatorPrincipal) else None,
        )
        return metering_pb2.CreateOperatorKeyResponse(operator_key=key, secret=secret)

    async def ListOperatorKeys(
        self, request: metering_pb2.ListOperatorKeysRequest, context: Context
    ) -> metering_pb2.ListOperatorKeysResponse:
        keys, next_token = await self._operators.list_page(request.page_size, request.page_token)
        return metering_pb2.ListOperatorKeysResponse(operator_keys=keys, next_page_token=next_token)

    async def RevokeOperatorKey(
        self, request: metering_pb2.RevokeOperatorKeyRequest, context: Context
    ) -> metering_pb2.RevokeOperatorKeyResponse:
        key = await self._operators.revoke(request.key_id)
        await self._announce(operator_subject(key.id))
        return metering_pb2.RevokeOperatorKeyResponse(operator_key=key)

    async def VerifyOperatorKey(
        self, request: metering_pb2.VerifyOperatorKeyRequest, context: Context
    ) -> metering_pb2.VerifyOperatorKeyResponse:
        key = await self._operators.verify(request.secret)  # bounded by the store
        return metering_pb2.VerifyOperatorKeyResponse(operator_key=key)
