"""Who is calling, and whether they may: principals and the authenticator of every server.

A call's principal is one of:

- :class:`ServicePrincipal`: another Switchboard service, named by its mutual-TLS certificate
  (or, where TLS is off, by an operator key holding ``service:<name>``);
- :class:`OperatorPrincipal`: an operator key (``sk-sb-op-``) with its scopes;
- :class:`TenantPrincipal`: an end user's inference API key (``sk-sb-v1-``), on the router's port,
  or forwarded by the router to metering.

:meth:`Authenticator.authorize` resolves the principal from the transport and the metadata and
checks it against the RPC's :class:`~switchboard_core.rpc_owners.Owner`. Each service supplies
a :class:`CredentialVerifier`: metering checks secrets in its own database, the router and the
catalog ask metering (and cache the answer briefly). The interceptor stores the principal in
:data:`principal_var` for the handler (account scoping, audit).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from switchboard_core.errors import PermissionDenied, Unauthenticated
from switchboard_core.key_format import KeyKind, kind_of
from switchboard_core.rpc_owners import (
    ALL_SCOPES,
    FORWARDED_AUTHORIZATION,
    SERVICE_SCOPE_PREFIX,
    Owner,
)
from switchboard_core.tls import TlsConfig


@dataclass(frozen=True, slots=True)
class ServicePrincipal:
    name: str

    def describe(self) -> str:
        return f"service:{self.name}"


@dataclass(frozen=True, slots=True)
class OperatorPrincipal:
    key_id: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        if scope in self.scopes:
            return True
        return ALL_SCOPES in self.scopes and not scope.startswith(SERVICE_SCOPE_PREFIX)

    def service_name(self) -> str | None:
        """The service this key stands for (a ``service:<name>`` scope), if any."""
        for scope in sorted(self.scopes):
            if scope.startswith(SERVICE_SCOPE_PREFIX):
                return scope[len(SERVICE_SCOPE_PREFIX) :]
        return None

    def describe(self) -> str:
        return f"operator:{self.key_id}"


@dataclass(frozen=True, slots=True)
class TenantPrincipal:
    key_id: str
    account_id: str
    # What the verifying service knows besides (the router keeps its budget view here).
    detail: Any = None

    def describe(self) -> str:
        return f"api_key:{self.key_id}"


Principal = ServicePrincipal | OperatorPrincipal | TenantPrincipal

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_principal() -> Principal | None:
    return principal_var.get()


def actor() -> str:
    """The current caller as audit logs name it ("operator:opk_...", "service:router")."""
    principal = principal_var.get()
    return principal.describe() if principal is not None else "anonymous"


class CredentialVerifier(Protocol):
    async def operator(self, secret: str) -> OperatorPrincipal:
        """The active operator key with this secret; :class:`Unauthenticated` otherwise."""
        ...

    async def tenant(self, secret: str) -> TenantPrincipal:
        """The active API key with this secret; :class:`Unauthenticated` otherwise."""
        ...


Metadata = Sequence[tuple[str, str | bytes]]
MISSING = (
    "this RPC needs credentials: metadata 'authorization: Bearer <key>'"
    " (and, on internal ports, a client certificate)"
)


def header(metadata: Metadata | None, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else None
    return None


def bearer_secret(value: str) -> str:
    scheme, _, secret = value.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated(
            "authorization metadata must be 'Bearer <key>'", reason="CREDENTIALS_MALFORMED"
        )
    return secret.strip()


class Authenticator:
    """Resolves and checks the principal of one call.

    ``direct_tenants``: API keys are accepted from the caller itself (the router's port).
    ``tenant_forwarders``: services that may forward an end user's API key in
    :data:`FORWARDED_AUTHORIZATION` (metering: the router), so the answer is scoped to it.
    """

    def __init__(
        self,
        tls: TlsConfig,
        verifier: CredentialVerifier,
        *,
        direct_tenants: bool = False,
        tenant_forwarders: frozenset[str] = frozenset(),
    ) -> None:
        self._tls = tls
        self._verifier = verifier
        self._direct_tenants = direct_tenants
        self._forwarders = tenant_forwarders

    async def authorize(
        self,
        method: str,
        owner: Owner,
        metadata: Metadata | None,
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> Principal | None:
        """The principal allowed to make this call; raises UNAUTHENTICATED or
        PERMISSION_DENIED (with ``ErrorInfo``) otherwise. Public RPCs need nothing."""
        if owner.public:
            return None
        service = None if self._tls.plaintext else self._tls.peer_service(auth_context)
        operator: OperatorPrincipal | None = None
        tenant: TenantPrincipal | None = None
        presented = header(metadata, "authorization")
        if presented is not None:
            secret = bearer_secret(presented)
            kind = kind_of(secret)
            if kind is KeyKind.OPERATOR:
                operator = await self._verifier.operator(secret)
                if service is None and self._tls.plaintext:
                    service = operator.service_name()
            elif kind is KeyKind.INFERENCE and self._direct_tenants:
                tenant = await self._verifier.tenant(secret)
            elif kind is KeyKind.INFERENCE:
                raise PermissionDenied(
                    "API keys are accepted on the router's port only; this RPC needs "
                    + owner.describe(),
                    reason="API_KEY_NOT_ACCEPTED_HERE",
                    metadata={"rpc": method},
                )
            else:
                raise Unauthenticated("not a Switchboard key", reason="CREDENTIALS_INVALID")
        if service is not None and service in self._forwarders:
            forwarded = header(metadata, FORWARDED_AUTHORIZATION)
            if forwarded is not None:
                tenant = await self._verifier.tenant(bearer_secret(forwarded))
        if owner.tenant and tenant is not None:
            return tenant
        if service is not None and service in owner.services:
            return ServicePrincipal(service)
        if owner.scope is not None and operator is not None and operator.has(owner.scope):
            return operator
        if service is None and operator is None and tenant is None:
            raise Unauthenticated(MISSING, reason="CREDENTIALS_MISSING", metadata={"rpc": method})
        raise PermissionDenied(
            f"{method} needs {owner.describe()}",
            reason="PERMISSION_DENIED",
            metadata={"rpc": method, "requires": owner.describe()},
        )
