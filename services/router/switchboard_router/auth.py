"""API-key authentication: metering verifies, the router caches the answer briefly.

The cache is keyed by the secret's SHA-256 so no plaintext key is kept. Concurrent requests
with the same uncached key share one VerifyApiKey call. Metering announces key changes
(:mod:`switchboard_core.key_changes`); :meth:`KeyVerifier.invalidate` then drops the cache.

:class:`RouterCredentials` is what the shared interceptor uses to authenticate a call on the
router's port: an end user's API key through :class:`KeyVerifier`, an operator key (which may
run completions when it holds the ``completions`` scope) through metering. The handler then
finds its :class:`Caller` with :func:`caller_of`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
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
from switchboard_core.errors import Unauthenticated
from switchboard_core.remote_credentials import MeteringCredentials, verification_error
from switchboard_router.key_rules import KeyRules

MAX_CACHED_KEYS = 100_000
VERIFY_TIMEOUT_SECONDS = 5.0
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


def _limits(key: metering_pb2.ApiKey) -> Limits:
    def usd(text: str) -> Decimal | None:
        return Decimal(text) if text else None

    return Limits(
        total=usd(key.limits.total_usd),
        daily=usd(key.limits.daily_usd),
        monthly=usd(key.limits.monthly_usd),
        prepaid=key.account_prepaid,
    )


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
    def __init__(self, channel: grpc.aio.Channel, ttl_seconds: float) -> None:
        self._stub = metering_pb2_grpc.MeteringServiceStub(channel)
        self._ttl = ttl_seconds
        self._cache: dict[bytes, tuple[float, Caller]] = {}
        self._pending: dict[bytes, asyncio.Task[Caller]] = {}
        # Bumped by invalidate(): an answer fetched before a change is not cached after it.
        self._generation = 0

    def invalidate(self) -> None:
        """Forget every cached key (a key or an account changed)."""
        self._generation += 1
        self._cache.clear()
        self._pending.clear()

    async def verify_secret(self, secret: str) -> Caller:
        digest = hashlib.sha256(secret.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        task = self._pending.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch(secret, digest))
            self._pending[digest] = task
            task.add_done_callback(lambda done: self._forget_pending(digest, done))
        return await asyncio.shield(task)

    def _forget_pending(self, digest: bytes, task: asyncio.Task[Caller]) -> None:
        if self._pending.get(digest) is task:  # not a newer fetch started after invalidate()
            del self._pending[digest]

    async def _fetch(self, secret: str, digest: bytes) -> Caller:
        generation = self._generation
        try:
            reply = await self._stub.VerifyApiKey(
                metering_pb2.VerifyApiKeyRequest(secret=secret), timeout=VERIFY_TIMEOUT_SECONDS
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
        )
        if generation != self._generation:
            return caller  # answered before a change; serve it once, cache nothing
        # Never past the key's expiry: metering refuses it from then on.
        ttl = self._ttl
        if caller.expire_time is not None:
            ttl = min(ttl, caller.expire_time - time.time())
        if ttl <= 0:
            return caller
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + ttl, caller)
        return caller


class RouterCredentials:
    """The router's :class:`switchboard_core.auth.CredentialVerifier`."""

    def __init__(self, keys: KeyVerifier, operators: MeteringCredentials) -> None:
        self.keys = keys
        self.operators = operators

    def invalidate(self) -> None:
        """Forget every cached key of either kind (metering announced a change)."""
        self.keys.invalidate()
        self.operators.invalidate()

    async def operator(self, secret: str) -> OperatorPrincipal:
        return await self.operators.operator(secret)

    async def tenant(self, secret: str) -> TenantPrincipal:
        caller = await self.keys.verify_secret(secret)
        return TenantPrincipal(key_id=caller.key_id, account_id=caller.account_id, detail=caller)
