"""API-key authentication: metering verifies, the router keeps the answer.

:class:`KeyVerifier` asks metering's ``VerifyApiKey`` (within
``SWITCHBOARD_KEY_VERIFY_TIMEOUT_SECONDS``) and keeps good answers in a
:class:`~switchboard_core.verified_cache.VerifiedCache`: fresh for
``SWITCHBOARD_KEY_CACHE_SECONDS``, then re-verified, and served from the last-known-good copy
for up to ``SWITCHBOARD_KEY_STALE_SECONDS`` while metering is unreachable. Metering announces
key changes (:mod:`switchboard_core.key_changes`); :meth:`RouterCredentials.key_changed`
evicts the keys a change names (``key:<id>``, ``account:<id>``, ``operator:<id>``).

:class:`RouterCredentials` is what the shared interceptor uses to authenticate a call on the
router's port: an end user's API key through :class:`KeyVerifier`, an operator key (which may
run completions when it holds the ``completions`` scope) through metering. The handler then
finds its :class:`Caller` with :func:`caller_of`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.auth import (
    OperatorPrincipal,
    Principal,
    TenantPrincipal,
    bearer_secret,
    header,
)
from switchboard_core.budget import Limits
from switchboard_core.errors import Unauthenticated, Unavailable
from switchboard_core.key_changes import (
    ACCOUNT,
    KEY,
    OPERATOR,
    account_subject,
    key_subject,
    subject_kind,
)
from switchboard_core.money import MoneyFormatError, parse_usd
from switchboard_core.rate_limits import NO_RATE_LIMITS, RateLimits, rate_limit_problems
from switchboard_core.remote_credentials import MeteringCredentials, verification_error
from switchboard_core.verified_cache import Verified, VerifiedCache
from switchboard_router.key_rules import KeyRules

log = logging.getLogger(__name__)

MAX_CACHED_KEYS = 100_000
VERIFY_TIMEOUT_SECONDS = 0.8
MISSING_KEY = "missing API key: send metadata 'authorization: Bearer <key>'"
# Metering's reasons for refusing the API key it was asked about.
API_KEY_VERDICTS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_REVOKED"})
# The account that completions run with an operator key are recorded under (no budget).
OPERATOR_ACCOUNT = "_operators"


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    account_id: str
    limits: Limits = field(default_factory=Limits)
    # The key's allow-lists of models and providers (switchboard_router.key_rules).
    rules: KeyRules = field(default_factory=KeyRules)
    # When the key expires (Unix seconds); None when it does not.
    expire_time: float | None = None
    # The key's own traffic limits, and its account's (shared by the account's keys).
    rate_limits: RateLimits = NO_RATE_LIMITS
    account_rate_limits: RateLimits = NO_RATE_LIMITS


def _limits(key: metering_pb2.ApiKey) -> Limits:
    """The key's spend limits; a malformed amount (never sent by a sound metering) makes the
    key unverifiable rather than unlimited."""

    def usd(text: str) -> Decimal | None:
        if not text:
            return None
        try:
            return parse_usd(text)
        except MoneyFormatError:
            log.error("metering sent a malformed key limit", extra={"key_id": key.id})
            raise Unavailable(
                "the key's limits could not be read", reason="KEY_SERVICE_UNAVAILABLE"
            ) from None

    return Limits(
        total=usd(key.limits.total_usd),
        daily=usd(key.limits.daily_usd),
        monthly=usd(key.limits.monthly_usd),
        prepaid=key.account_prepaid,
    )


def _rate_limits(key: metering_pb2.ApiKey, field: str) -> RateLimits:
    """The key's (``rate_limits``) or its account's (``account_rate_limits``) rate limits. One
    above its bound (never sent by a sound metering) makes the key unverifiable rather than
    limited by a number nothing checked, as a malformed spend limit does."""
    limits: metering_pb2.RateLimits = getattr(key, field)
    if rate_limit_problems(limits, field):
        log.error("metering sent a rate limit out of bounds", extra={"key_id": key.id})
        raise Unavailable("the key's limits could not be read", reason="KEY_SERVICE_UNAVAILABLE")
    return RateLimits.from_proto(limits)


def secret_of(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The bearer secret in ``authorization`` metadata; UNAUTHENTICATED when missing."""
    presented = header(metadata, "authorization")
    if presented is None:
        raise Unauthenticated(MISSING_KEY, reason="CREDENTIALS_MISSING")
    return bearer_secret(presented)


def caller_of(principal: Principal | None) -> Caller:
    """Whom a completion runs for: the API key's owner, or an operator key (no limits)."""
    if isinstance(principal, TenantPrincipal) and isinstance(principal.detail, Caller):
        return principal.detail
    if isinstance(principal, OperatorPrincipal):
        return Caller(key_id=principal.key_id, account_id=OPERATOR_ACCOUNT)
    raise Unauthenticated(MISSING_KEY, reason="CREDENTIALS_MISSING")


class KeyVerifier:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        ttl_seconds: float,
        *,
        stale_seconds: float = 0.0,
        timeout_seconds: float = VERIFY_TIMEOUT_SECONDS,
    ) -> None:
        self._stub = metering_pb2_grpc.MeteringServiceStub(channel)
        self._timeout = timeout_seconds
        self.cache: VerifiedCache[Caller] = VerifiedCache(
            "api_key",
            self._fetch,
            ttl_seconds=ttl_seconds,
            stale_seconds=stale_seconds,
            max_entries=MAX_CACHED_KEYS,
        )

    def evict(self, subject: str) -> None:
        """Forget the keys an announced ``key:<id>`` or ``account:<id>`` names."""
        self.cache.evict(subject)

    def invalidate(self) -> None:
        """Forget every cached key."""
        self.cache.evict_all()

    async def verify_secret(self, secret: str) -> Caller:
        return await self.cache.get(secret)

    async def _fetch(self, secret: str) -> Verified[Caller]:
        try:
            reply = await self._stub.VerifyApiKey(
                metering_pb2.VerifyApiKeyRequest(secret=secret), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise verification_error(error, "API key", API_KEY_VERDICTS) from None
        key = reply.api_key
        caller = Caller(
            key_id=key.id,
            account_id=key.account_id,
            limits=_limits(key),
            rules=KeyRules.from_key(key),
            expire_time=key.expire_time.ToNanoseconds() / 1e9
            if key.HasField("expire_time")
            else None,
            rate_limits=_rate_limits(key, "rate_limits"),
            account_rate_limits=_rate_limits(key, "account_rate_limits"),
        )
        subjects = (key_subject(key.id), account_subject(key.account_id))
        return Verified(caller, subjects, caller.expire_time)


class RouterCredentials:
    """The router's :class:`switchboard_core.auth.CredentialVerifier`."""

    def __init__(self, keys: KeyVerifier, operators: MeteringCredentials) -> None:
        self.keys = keys
        self.operators = operators

    def key_changed(self, subject: str) -> None:
        """Metering announced a change to ``subject``: evict the keys it names (every key,
        of both kinds, for a subject this router does not know)."""
        kind = subject_kind(subject)
        if kind in (KEY, ACCOUNT):
            self.keys.evict(subject)
        elif kind == OPERATOR:
            self.operators.evict(subject)
        else:
            log.warning("unknown key change announced; forgetting every cached key")
            self.keys.invalidate()
            self.operators.invalidate()

    def resubscribed(self) -> None:
        """The change listener (re)subscribed and may have missed announcements: every
        cached key is re-verified on its next use (still usable stale meanwhile)."""
        self.keys.cache.mark_all_due()
        self.operators.cache.mark_all_due()

    async def operator(self, secret: str) -> OperatorPrincipal:
        return await self.operators.operator(secret)

    async def tenant(self, secret: str) -> TenantPrincipal:
        caller = await self.keys.verify_secret(secret)
        return TenantPrincipal(key_id=caller.key_id, account_id=caller.account_id, detail=caller)
