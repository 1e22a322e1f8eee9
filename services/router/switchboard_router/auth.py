"""API-key authentication: metering verifies, the router caches the answer briefly.

The cache is keyed by the secret's SHA-256 so no plaintext key is kept. Concurrent requests
with the same uncached key share one VerifyApiKey call. Metering announces key changes
(:mod:`switchboard_core.key_changes`); :meth:`KeyVerifier.invalidate` then drops the cache.
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
from switchboard_core.budget import Limits
from switchboard_core.errors import Unauthenticated, Unavailable, from_rpc_error

MAX_CACHED_KEYS = 100_000
VERIFY_TIMEOUT_SECONDS = 5.0
MISSING_KEY = "missing API key: send metadata 'authorization: Bearer <key>'"


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    account_id: str
    limits: Limits = field(default_factory=Limits)


def _limits(key: metering_pb2.ApiKey) -> Limits:
    def usd(text: str) -> Decimal | None:
        return Decimal(text) if text else None

    return Limits(
        total=usd(key.limits.total_usd),
        daily=usd(key.limits.daily_usd),
        monthly=usd(key.limits.monthly_usd),
        prepaid=key.account_prepaid,
    )


def bearer_secret(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, secret = value.partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
    raise Unauthenticated(MISSING_KEY)


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

    async def verify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller:
        secret = bearer_secret(metadata)
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
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated("API key is not valid") from None
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    "cannot verify the API key right now",
                    reason="KEY_SERVICE_UNAVAILABLE",
                    retry_after_seconds=1.0,
                ) from None
            raise from_rpc_error(error) from None
        caller = Caller(
            key_id=reply.api_key.id,
            account_id=reply.api_key.account_id,
            limits=_limits(reply.api_key),
        )
        if generation != self._generation:
            return caller  # answered before a change; serve it once, cache nothing
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + self._ttl, caller)
        return caller
