"""Who may call every RPC of every Switchboard server: the one table the interceptor enforces.

Each RPC names its owners:

- ``public``: anyone (health checks, server reflection);
- ``services``: the Switchboard services whose identity (mutual TLS, see
  :mod:`switchboard_core.tls`) may call it, e.g. the router calling metering's ``VerifyApiKey``;
- ``scope``: the operator-key scope that grants it (``keys:write``, ``catalog:write``...); a key
  with ``*`` holds every operator scope;
- ``tenant``: an end user's inference API key, for their own data only. On the router's
  port the key comes from the caller; metering accepts it only when the router forwards it
  (:data:`FORWARDED_AUTHORIZATION`), and scopes the answer to the key's account itself.

An admin write also names its :class:`Audit`: after each successful call the interceptor
appends an event (caller, RPC, target, change) to the service's audit log
(:mod:`switchboard_core.audit`). Every RPC owned by a write scope (:data:`WRITE_SCOPES`) must
have one; a test holds the table to it.

An RPC missing from this table is refused (fail closed), and a test walks every method of every
service descriptor to prove that each one is listed and refuses callers without its owner's
credential: a new RPC without an owner fails that test.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Scope(enum.StrEnum):
    """What an operator key may do. ``*`` (:data:`ALL_SCOPES`) grants every one of these."""

    KEYS_READ = "keys:read"
    KEYS_WRITE = "keys:write"
    LIMITS_WRITE = "limits:write"
    CREDITS_WRITE = "credits:write"
    USAGE_READ = "usage:read"
    CATALOG_READ = "catalog:read"
    CATALOG_WRITE = "catalog:write"
    AUDIT_READ = "audit:read"
    OPERATORS_READ = "operators:read"
    OPERATORS_WRITE = "operators:write"
    COMPLETIONS = "completions"


# The Switchboard services, as named in service identities and ``service:<name>`` scopes.
SERVICES = ("router", "catalog", "metering")
ALL_SCOPES = "*"
# "service:router": an operator key that stands for a service where mutual TLS is off. Never
# implied by "*": a service identity is granted by name only.
SERVICE_SCOPE_PREFIX = "service:"
# Metadata in which the router forwards an end user's own API key to metering.
FORWARDED_AUTHORIZATION = "x-switchboard-forwarded-authorization"


# The scopes that change things: every RPC one of them owns is audited.
WRITE_SCOPES = frozenset(
    {
        Scope.KEYS_WRITE,
        Scope.LIMITS_WRITE,
        Scope.CREDITS_WRITE,
        Scope.CATALOG_WRITE,
        Scope.OPERATORS_WRITE,
    }
)


@dataclass(frozen=True, slots=True)
class Audit:
    """How a successful call of an admin write is recorded (:mod:`switchboard_core.audit`).

    ``kind`` and ``target`` name what changed: ``target`` is a field path in the request
    (``"request.account_id"``) or the response (``"response.api_key.id"``, for what the call
    created), recorded as ``"<kind>:<value>"``. The change is the request, without the
    ``redact`` field paths (secrets), plus the ``result`` field paths of the response (a new
    key's id and prefix, never its secret: responses are recorded only through ``result``).
    """

    kind: str
    target: str
    result: tuple[str, ...] = ()
    redact: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Owner:
    public: bool = False
    services: frozenset[str] = frozenset()
    scope: Scope | None = None
    tenant: bool = False
    # Set on admin writes: the interceptor records each successful call.
    audit: Audit | None = None

    def describe(self) -> str:
        """What the RPC needs, for error messages."""
        parts = [f"service {name}" for name in sorted(self.services)]
        if self.scope is not None:
            parts.append(f"an operator key with scope {self.scope.value}")
        if self.tenant:
            parts.append("an API key")
        return " or ".join(parts) or "nobody"


def _services(*names: str) -> frozenset[str]:
    return frozenset(names)


PUBLIC = Owner(public=True)
ROUTER = "switchboard.router.v1.RouterService"
CATALOG = "switchboard.catalog.v1.CatalogService"
METERING = "switchboard.metering.v1.MeteringService"
AUDIT = "switchboard.audit.v1.AuditService"
# The new key's public fields: never ``secret``.
_API_KEY_CREATED = ("api_key.id", "api_key.account_id", "api_key.name", "api_key.prefix")
_OPERATOR_KEY_CREATED = (
    "operator_key.id",
    "operator_key.name",
    "operator_key.scopes",
    "operator_key.prefix",
)

RPC_OWNERS: Mapping[str, Owner] = {
    # Standard services every server runs.
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.health.v1.Health/List": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
    # Router: the public API.
    f"/{ROUTER}/StreamCompletion": Owner(tenant=True, scope=Scope.COMPLETIONS),
    f"/{ROUTER}/CreateCompletion": Owner(tenant=True, scope=Scope.COMPLETIONS),
    # The calling key's own data: an operator key has no account, so no scope reaches
    # these (operators read any account's on metering's port). The model list is the
    # catalog's, which catalog:read may read anyway.
    f"/{ROUTER}/GetKey": Owner(tenant=True),
    f"/{ROUTER}/GetGeneration": Owner(tenant=True),
    f"/{ROUTER}/QueryUsage": Owner(tenant=True),
    f"/{ROUTER}/ListModels": Owner(tenant=True, scope=Scope.CATALOG_READ),
    # Catalog.
    f"/{CATALOG}/ListModels": Owner(scope=Scope.CATALOG_READ),
    f"/{CATALOG}/GetModel": Owner(scope=Scope.CATALOG_READ),
    f"/{CATALOG}/ListProviders": Owner(scope=Scope.CATALOG_READ),
    # Routers for current prices; metering for the price history it checks costs against.
    f"/{CATALOG}/WatchCatalog": Owner(services=_services("router", "metering")),
    f"/{CATALOG}/UpsertProvider": Owner(
        scope=Scope.CATALOG_WRITE, audit=Audit("provider", "response.provider.id")
    ),
    f"/{CATALOG}/UpsertModel": Owner(
        scope=Scope.CATALOG_WRITE, audit=Audit("model", "response.model.id")
    ),
    f"/{CATALOG}/UpsertEndpoint": Owner(
        scope=Scope.CATALOG_WRITE, audit=Audit("endpoint", "response.endpoint.id")
    ),
    # A dry run is recorded too: who looked, and at which source version.
    f"/{CATALOG}/ImportCatalog": Owner(
        scope=Scope.CATALOG_WRITE,
        audit=Audit(
            "catalog_import",
            "request.source",
            result=("applied", "source_version", "catalog_version"),
        ),
    ),
    # Metering.
    f"/{METERING}/CreateApiKey": Owner(
        scope=Scope.KEYS_WRITE,
        audit=Audit("api_key", "response.api_key.id", result=_API_KEY_CREATED),
    ),
    f"/{METERING}/ListApiKeys": Owner(scope=Scope.KEYS_READ),
    # tenant: an API key the router forwards, answered for its own account only.
    f"/{METERING}/GetApiKey": Owner(tenant=True, scope=Scope.KEYS_READ),
    f"/{METERING}/RevokeApiKey": Owner(
        scope=Scope.KEYS_WRITE, audit=Audit("api_key", "request.key_id")
    ),
    f"/{METERING}/VerifyApiKey": Owner(services=_services("router")),
    f"/{METERING}/RecordUsage": Owner(services=_services("router")),
    f"/{METERING}/GetGeneration": Owner(tenant=True, scope=Scope.USAGE_READ),
    f"/{METERING}/QueryUsage": Owner(tenant=True, scope=Scope.USAGE_READ),
    f"/{METERING}/SetKeyLimits": Owner(
        scope=Scope.LIMITS_WRITE, audit=Audit("api_key", "request.key_id")
    ),
    f"/{METERING}/SetAccountLimits": Owner(
        scope=Scope.LIMITS_WRITE, audit=Audit("account", "request.account_id")
    ),
    f"/{METERING}/AddCredits": Owner(
        # "duplicate": a retried request_id added nothing.
        scope=Scope.CREDITS_WRITE,
        audit=Audit("account", "request.account_id", result=("duplicate",)),
    ),
    f"/{METERING}/GetBalance": Owner(tenant=True, scope=Scope.USAGE_READ),
    f"/{METERING}/CreateOperatorKey": Owner(
        scope=Scope.OPERATORS_WRITE,
        audit=Audit("operator_key", "response.operator_key.id", result=_OPERATOR_KEY_CREATED),
    ),
    f"/{METERING}/ListOperatorKeys": Owner(scope=Scope.OPERATORS_READ),
    f"/{METERING}/RevokeOperatorKey": Owner(
        scope=Scope.OPERATORS_WRITE, audit=Audit("operator_key", "request.key_id")
    ),
    f"/{METERING}/VerifyOperatorKey": Owner(services=_services("router", "catalog")),
    # The audit log: the catalog and metering each serve their own.
    f"/{AUDIT}/ListAuditEvents": Owner(scope=Scope.AUDIT_READ),
}


# The router's HTTP edge (switchboard_router.edge): each route is owned as the RPC it runs
# through, so one table still names who may call what. A route missing here is not served.
HTTP_ROUTE_RPCS: Mapping[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): f"/{ROUTER}/StreamCompletion",
    ("POST", "/v1/messages"): f"/{ROUTER}/StreamCompletion",
    ("GET", "/v1/models"): f"/{ROUTER}/ListModels",
}

_SCOPE_VALUES = frozenset(scope.value for scope in Scope)


def audited_rpcs(service_full_name: str) -> list[str]:
    """The audited RPCs of a gRPC service (``"switchboard.metering.v1.MeteringService"``)."""
    prefix = f"/{service_full_name}/"
    return sorted(
        path
        for path, owner in RPC_OWNERS.items()
        if path.startswith(prefix) and owner.audit is not None
    )


def known_scope(scope: str) -> bool:
    """Whether an operator key may hold ``scope``."""
    if scope == ALL_SCOPES or scope in _SCOPE_VALUES:
        return True
    return scope.startswith(SERVICE_SCOPE_PREFIX) and scope[len(SERVICE_SCOPE_PREFIX) :] in SERVICES
