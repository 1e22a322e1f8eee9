"""Operator keys checked by metering, for the services that do not own them (catalog, router).

``MeteringCredentials.operator`` asks metering's ``VerifyOperatorKey`` (bounded by
``timeout_seconds``) and keeps a good answer in a
:class:`~switchboard_core.verified_cache.VerifiedCache` (keyed by the secret's SHA-256, so no
secret is kept): fresh for ``ttl_seconds``, and usable for ``stale_seconds`` while metering
is unreachable (0 by default: a service that does not hear metering's key-change
announcements should not serve stale operator keys). A refused key is not cached, so a new
key works at once. A revocation applies after at most the cache time, or at once where
:meth:`MeteringCredentials.evict` is called with the announced ``operator:<id>`` (the router
does, on metering's key-change announcements). Metering unreachable and no usable answer
means ``UNAVAILABLE`` with ``RetryInfo`` for the caller, never a wait without end.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.auth import OperatorPrincipal, TenantPrincipal
from switchboard_core.errors import SwitchboardError, Unauthenticated, Unavailable, error_reason
from switchboard_core.key_changes import operator_subject
from switchboard_core.verified_cache import Unreachable, Verified, VerifiedCache

log = logging.getLogger(__name__)

MAX_CACHED = 10_000
DEFAULT_TTL_SECONDS = 10.0
DEFAULT_TIMEOUT_SECONDS = 5.0
# Metering did not answer: the caller's key is not in question.
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class MeteringCredentials:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        stale_seconds: float = 0.0,
    ) -> None:
        self._stub = metering_pb2_grpc.MeteringServiceStub(channel)
        self._timeout = timeout_seconds
        self.cache: VerifiedCache[OperatorPrincipal] = VerifiedCache(
            "operator_key",
            self._fetch,
            ttl_seconds=ttl_seconds,
            stale_seconds=stale_seconds,
            max_entries=MAX_CACHED,
        )

    def evict(self, subject: str) -> None:
        """Forget the answer for an announced ``operator:<id>``."""
        self.cache.evict(subject)

    def invalidate(self) -> None:
        """Forget every answer."""
        self.cache.evict_all()

    async def operator(self, secret: str) -> OperatorPrincipal:
        return await self.cache.get(secret)

    async def _fetch(self, secret: str) -> Verified[OperatorPrincipal]:
        try:
            reply = await self._stub.VerifyOperatorKey(
                metering_pb2.VerifyOperatorKeyRequest(secret=secret), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise verification_error(error, "operator key", {"OPERATOR_KEY_INVALID"}) from None
        key = reply.operator_key
        return Verified(
            OperatorPrincipal(key_id=key.id, scopes=frozenset(key.scopes)),
            (operator_subject(key.id),),
            float(key.expire_time.seconds) if key.HasField("expire_time") else None,
        )

    async def tenant(self, secret: str) -> TenantPrincipal:
        raise Unauthenticated(
            "API keys are accepted on the router's port only", reason="API_KEY_NOT_ACCEPTED_HERE"
        )


def verification_error(
    error: grpc.aio.AioRpcError, what: str, about_the_key: Collection[str]
) -> SwitchboardError | Unreachable:
    """What a failed Verify* call to metering means for the caller being authenticated.

    UNAUTHENTICATED with a reason in ``about_the_key`` is metering's verdict on the key.
    ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` is metering unreachable: :class:`Unreachable`,
    which a cache may answer for with a copy it verified before. A refusal of this service's
    own credentials (a certificate or service key metering does not accept: a deployment
    mistake) is not the caller's fault: it is logged and reported as UNAVAILABLE, but no
    cached copy stands in for it.
    """
    reason = error_reason(error)
    if error.code() == grpc.StatusCode.UNAUTHENTICATED and reason in about_the_key:
        return Unauthenticated(error.details() or f"invalid {what}", reason=reason)
    unavailable = Unavailable(
        f"cannot verify the {what} right now",
        reason="KEY_SERVICE_UNAVAILABLE",
        retry_after_seconds=1.0,
    )
    if error.code() in UNREACHABLE_CODES:
        return Unreachable(unavailable)
    log.error(
        "metering refused to verify a key for this service; check its certificate or service key",
        extra={"grpc_code": error.code().name, "reason": reason},
    )
    return unavailable
