"""Operator keys checked by metering, for the services that do not own them (catalog, router).

``MeteringCredentials.operator`` asks metering's ``VerifyOperatorKey`` and keeps a good answer
for ``ttl_seconds`` (keyed by the secret's SHA-256, so no secret is kept); a refused key is
not cached, so a new key works at once. A revocation applies after at most the cache time, or
at once where :meth:`MeteringCredentials.invalidate` is called (the router does on metering's
key-change announcements). Calls are bounded by ``timeout_seconds``: metering unreachable
means ``UNAVAILABLE`` for the admin call, never a wait without end.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.auth import OperatorPrincipal, TenantPrincipal
from switchboard_core.errors import SwitchboardError, Unauthenticated, Unavailable, error_reason

log = logging.getLogger(__name__)

MAX_CACHED = 10_000
DEFAULT_TTL_SECONDS = 10.0
DEFAULT_TIMEOUT_SECONDS = 5.0


class MeteringCredentials:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._stub = metering_pb2_grpc.MeteringServiceStub(channel)
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._cache: dict[bytes, tuple[float, OperatorPrincipal]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    async def operator(self, secret: str) -> OperatorPrincipal:
        digest = hashlib.sha256(secret.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            reply = await self._stub.VerifyOperatorKey(
                metering_pb2.VerifyOperatorKeyRequest(secret=secret), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise verification_error(error, "operator key", {"OPERATOR_KEY_INVALID"}) from None
        key = reply.operator_key
        principal = OperatorPrincipal(key_id=key.id, scopes=frozenset(key.scopes))
        ttl = self._ttl
        if key.HasField("expire_time"):
            ttl = min(ttl, key.expire_time.seconds - time.time())
        if ttl > 0:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + ttl, principal)
        return principal

    async def tenant(self, secret: str) -> TenantPrincipal:
        raise Unauthenticated(
            "API keys are accepted on the router's port only", reason="API_KEY_NOT_ACCEPTED_HERE"
        )


def verification_error(
    error: grpc.aio.AioRpcError, what: str, about_the_key: Collection[str]
) -> SwitchboardError:
    """What a failed Verify* call to metering means for the caller being authenticated.

    UNAUTHENTICATED with a reason in ``about_the_key`` is metering's verdict on the key; a
    refusal of this service's own credentials (a certificate or service key metering does not
    accept: a deployment mistake) is not the caller's fault: it is logged and reported as
    UNAVAILABLE, like metering being unreachable.
    """
    reason = error_reason(error)
    if error.code() == grpc.StatusCode.UNAUTHENTICATED and reason in about_the_key:
        return Unauthenticated(error.details() or f"invalid {what}", reason=reason)
    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.error(
            "metering refused to verify a key for this service; check its certificate or"
            " service key",
            extra={"grpc_code": error.code().name, "reason": reason},
        )
    return Unavailable(
        f"cannot verify the {what} right now",
        reason="KEY_SERVICE_UNAVAILABLE",
        retry_after_seconds=1.0,
    )
