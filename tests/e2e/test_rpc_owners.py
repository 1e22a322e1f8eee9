"""The auth matrix: every RPC of every service, called by every kind of caller, through the
real processes over mutual TLS.

For each RPC in the descriptors that is not public, every caller that is not its owner is
refused with UNAUTHENTICATED or PERMISSION_DENIED carrying an ErrorInfo that says why, and
its owner gets past authorization (the empty request then fails or succeeds on its merits).
An API key is an owner on the router's port when it calls itself, and on metering's only when
the router forwards it (``FORWARDED_AUTHORIZATION``): from anyone else it is refused.
A new RPC without an owner is refused by every server, and fails tests/unit/test_rpc_owner_table.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core.channels import client_channel
from switchboard_core.rpc_owners import FORWARDED_AUTHORIZATION, RPC_OWNERS, SERVICES, Scope
from switchboard_devstack.pki import OPERATOR, DevPki
from switchboard_devstack.stack import Stack
from tests.rpc_methods import Rpc, all_rpcs

pytestmark = [pytest.mark.e2e]

# The servers that serve each service (the audit log is served by each service that has one).
SERVERS = {
    "switchboard.router.v1.RouterService": ("router",),
    "switchboard.catalog.v1.CatalogService": ("catalog",),
    "switchboard.metering.v1.MeteringService": ("metering",),
    "switchboard.audit.v1.AuditService": ("catalog", "metering"),
}
# ErrorInfo reasons of the authorization layer (a handler's own UNAUTHENTICATED, such as
# VerifyApiKey's answer about the key it was asked about, is not one of them).
REFUSALS = {
    "CREDENTIALS_MISSING",
    "CREDENTIALS_MALFORMED",
    "CREDENTIALS_INVALID",
    "OPERATOR_KEY_INVALID",
    "API_KEY_INVALID",
    "API_KEY_NOT_ACCEPTED_HERE",
    "PERMISSION_DENIED",
    "RPC_HAS_NO_OWNER",
}
GUARDED = [
    pytest.param(rpc, server, id=f"{server}{rpc.path}")
    for rpc in all_rpcs()
    if not RPC_OWNERS[rpc.path].public
    for server in SERVERS[rpc.service.full_name]
]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str

    @property
    def refused(self) -> bool:
        return (
            self.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            and self.reason in REFUSALS
        )


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


async def call(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    metadata: Sequence[tuple[str, str]] = (),
    request: Message | None = None,
) -> Outcome:
    """Call ``rpc`` (with an empty request unless one is given); a streaming call counts as
    let in at its first message (and is then cancelled)."""
    request = request or rpc.request()
    serialize = type(request).SerializeToString
    parse = rpc.response_class().FromString
    try:
        if rpc.server_streaming:
            stream = channel.unary_stream(
                rpc.path, request_serializer=serialize, response_deserializer=parse
            )(request, metadata=metadata, timeout=10)
            try:
                async for _ in stream:
                    break
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(
                rpc.path, request_serializer=serialize, response_deserializer=parse
            )(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), _reason(error))
    return Outcome(grpc.StatusCode.OK, "")


@dataclass
class Callers:
    """Credentials of every kind, made through the real admin API."""

    only: dict[Scope, str]  # an operator key holding just this scope
    all_but: dict[Scope, str]  # an operator key holding every other scope
    api_key: str
    revoked: str  # a revoked operator key holding every scope


async def _operator_key(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub, scopes: list[str]
) -> str:
    reply = await metering.CreateOperatorKey(
        metering_pb2.CreateOperatorKeyRequest(name="matrix", scopes=scopes)
    )
    return reply.secret


@pytest.fixture(scope="module")
async def callers(metering: metering_pb2_grpc.MeteringServiceAsyncStub) -> Callers:
    every = [scope.value for scope in Scope]
    only = {scope: await _operator_key(metering, [scope.value]) for scope in Scope}
    all_but = {
        scope: await _operator_key(metering, [s for s in every if s != scope.value])
        for scope in Scope
    }
    revoked = await metering.CreateOperatorKey(
        metering_pb2.CreateOperatorKeyRequest(name="revoked", scopes=["*"])
    )
    await metering.RevokeOperatorKey(
        metering_pb2.RevokeOperatorKeyRequest(key_id=revoked.operator_key.id)
    )
    api_key = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id="matrix"))
    return Callers(only, all_but, api_key.secret, revoked.secret)


@pytest.fixture(scope="module")
async def channels(stack: Stack) -> AsyncIterator[dict[tuple[str, str], grpc.aio.Channel]]:
    """(server, certificate) -> a channel without a bearer token; the router's port asks for
    no certificate."""
    opened: dict[tuple[str, str], grpc.aio.Channel] = {}
    for server in SERVICES:
        for identity in (OPERATOR, *SERVICES):
            opened[server, identity] = stack.channel(server, bearer="", as_=identity)
    yield opened
    for channel in opened.values():
        await channel.close(None)


def bearer(secret: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {secret}"),)


@pytest.mark.parametrize(("rpc", "server"), GUARDED)
async def test_only_the_owner_of_an_rpc_may_call_it(
    rpc: Rpc,
    server: str,
    channels: dict[tuple[str, str], grpc.aio.Channel],
    callers: Callers,
) -> None:
    owner = RPC_OWNERS[rpc.path]
    plain = channels[server, OPERATOR]
    refused: dict[str, Outcome] = {}
    allowed: dict[str, Outcome] = {}

    refused["no credential"] = await call(plain, rpc)
    assert refused["no credential"].code == grpc.StatusCode.UNAUTHENTICATED
    refused["unknown operator key"] = await call(
        plain, rpc, bearer("sk-sb-op-" + secrets.token_urlsafe(32))
    )
    refused["revoked operator key"] = await call(plain, rpc, bearer(callers.revoked))
    refused["garbage bearer"] = await call(plain, rpc, bearer("hunter2"))
    refused["not bearer"] = await call(plain, rpc, (("authorization", "Basic dXNlcjpwYXNz"),))

    # An API key reaches its owner's RPCs on the router's port only; on metering's port only
    # when the router forwards it (and then it is scoped to its account by metering itself).
    if owner.tenant and server == "router":
        allowed["api key"] = await call(plain, rpc, bearer(callers.api_key))
    else:
        refused["api key"] = await call(plain, rpc, bearer(callers.api_key))

    # The services' own RPCs check a secret they are given: give them a good one, so that
    # their answer about it is not mistaken for a refusal of the caller.
    checked: Message | None = None
    if rpc.path.endswith("/VerifyApiKey"):
        checked = metering_pb2.VerifyApiKeyRequest(secret=callers.api_key)
    elif rpc.path.endswith("/VerifyOperatorKey"):
        checked = metering_pb2.VerifyOperatorKeyRequest(secret=callers.only[Scope.KEYS_READ])
    for service in SERVICES:
        outcome = await call(channels[server, service], rpc, request=checked)
        (allowed if service in owner.services else refused)[f"service {service}"] = outcome
    if server != "router":
        forwarded = ((FORWARDED_AUTHORIZATION, f"Bearer {callers.api_key}"),)
        refused["forwarded api key, no service"] = await call(plain, rpc, forwarded)
        for service in SERVICES:
            outcome = await call(channels[server, service], rpc, forwarded, request=checked)
            lets_in = service in owner.services or (owner.tenant and service == "router")
            (allowed if lets_in else refused)[f"api key forwarded by {service}"] = outcome

    if owner.scope is not None:
        allowed[f"scope {owner.scope}"] = await call(plain, rpc, bearer(callers.only[owner.scope]))
        refused[f"every scope but {owner.scope}"] = await call(
            plain, rpc, bearer(callers.all_but[owner.scope])
        )
    else:
        # A service's RPC: no operator scope reaches it.
        refused["operator with every scope"] = await call(
            plain, rpc, bearer(callers.all_but[Scope.COMPLETIONS])
        )
        refused["operator with completions"] = await call(
            plain, rpc, bearer(callers.only[Scope.COMPLETIONS])
        )

    wrongly_allowed = {who: o for who, o in refused.items() if not o.refused}
    wrongly_refused = {who: o for who, o in allowed.items() if o.refused}
    assert not wrongly_allowed, f"{rpc.path} let in: {wrongly_allowed}"
    assert not wrongly_refused, f"{rpc.path} refused its owner: {wrongly_refused}"
    assert allowed, "every guarded RPC has an owner who can call it"


async def test_internal_ports_refuse_a_handshake_without_our_certificate(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    foreign = DevPki.ensure(tmp_path_factory.mktemp("foreign-ca"))
    ca = stack.pki.ca.read_bytes()
    health = next(rpc for rpc in all_rpcs() if rpc.path == "/grpc.health.v1.Health/Check")
    for server in ("catalog", "metering"):
        address = stack.address(server)
        async with client_channel(address, ca=ca) as no_cert:
            assert (await call(no_cert, health)).code == grpc.StatusCode.UNAVAILABLE
        cert, key, _ = foreign.read("router")  # "router", signed by another CA
        async with client_channel(address, ca=ca, cert=cert, key=key) as impostor:
            assert (await call(impostor, health)).code == grpc.StatusCode.UNAVAILABLE
    # The public port serves anyone over TLS, and health checks need no credential.
    async with client_channel(stack.address("router"), ca=ca) as public:
        assert (await call(public, health)).code == grpc.StatusCode.OK


async def test_a_scope_cannot_be_granted_by_a_key_that_lacks_it(
    stack: Stack, callers: Callers
) -> None:
    async with stack.channel("metering", bearer=callers.only[Scope.OPERATORS_WRITE]) as channel:
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await metering.CreateOperatorKey(
                metering_pb2.CreateOperatorKeyRequest(name="escalate", scopes=["credits:write"])
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reason(refused.value) == "SCOPE_NOT_HELD"
        granted = await metering.CreateOperatorKey(
            metering_pb2.CreateOperatorKeyRequest(name="same", scopes=["operators:write"])
        )
        assert list(granted.operator_key.scopes) == ["operators:write"]
