"""What every HTTP route shares: who is calling, the request body, the completions.

A route's caller is checked exactly as a gRPC call of the RPC it runs through
(:data:`switchboard_core.rpc_owners.HTTP_ROUTE_RPCS`), by the router's own
:class:`~switchboard_core.auth.Authenticator`: the same API keys, operator scopes, caches and
refusals. The key comes as ``Authorization: Bearer <key>`` (OpenAI SDKs) or ``x-api-key``
(Anthropic SDKs).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from switchboard_core.auth import Authenticator, principal_var
from switchboard_core.errors import DeadlineExceeded, InvalidArgument, PermissionDenied
from switchboard_core.logs import request_id_var
from switchboard_core.request_checks import request_violations
from switchboard_core.rpc_owners import HTTP_ROUTE_RPCS, RPC_OWNERS
from switchboard_router.account import AccountReads
from switchboard_router.auth import Caller, caller_of
from switchboard_router.completions import Completions
from switchboard_router.edge.keepalive import KEEPALIVE_SECONDS

# The largest request body accepted (the gRPC port's message limit).
MAX_BODY_BYTES = 32 * 1024 * 1024
REQUEST_ID_HEADER = "X-Request-Id"
# The longest a client may take to send its request body (32 MiB at 10 Mbit/s is ~27 s).
BODY_READ_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Door:
    completions: Completions
    account: AccountReads
    authenticator: Authenticator
    # A stream's wait for its first event before keep-alive lines begin it (keepalive.py).
    keepalive_seconds: float = KEEPALIVE_SECONDS

    async def caller(self, request: web.Request) -> Caller:
        """The authenticated caller of this route (Unauthenticated / PermissionDenied
        otherwise); also sets the request id and the principal for the handler."""
        request_id_var.set(request_id(request))
        resource = request.match_info.route.resource
        route = (request.method, resource.canonical if resource is not None else request.path)
        rpc = HTTP_ROUTE_RPCS.get(route)
        if rpc is None:  # never served: HttpEdge refuses to add such a route
            raise PermissionDenied(f"{route} has no owner", reason="RPC_HAS_NO_OWNER")
        metadata: list[tuple[str, str]] = []
        authorization = request.headers.get("Authorization")
        api_key = request.headers.get("x-api-key")
        if authorization is not None:
            metadata.append(("authorization", authorization))
        elif api_key is not None:
            metadata.append(("authorization", f"Bearer {api_key}"))
        principal = await self.authenticator.authorize(rpc, RPC_OWNERS[rpc], metadata, {})
        principal_var.set(principal)
        return caller_of(principal)


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is short and printable, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return os.urandom(16).hex()


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; InvalidArgument naming the problem otherwise (the size limit
    is the application's ``client_max_size``: 413). A client that stops sending its body
    mid-way gets DeadlineExceeded (408) after :data:`BODY_READ_SECONDS`, not a held slot."""
    try:
        raw = await asyncio.wait_for(request.read(), BODY_READ_SECONDS)
    except TimeoutError:
        raise DeadlineExceeded(
            f"the request body did not arrive within {BODY_READ_SECONDS:g} s",
            reason="REQUEST_BODY_TIMEOUT",
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidArgument({"": f"the body is not valid JSON: {error.msg}"}) from None
    if not isinstance(body, dict):
        raise InvalidArgument({"": "the body must be a JSON object"})
    return body


def checked(message: Any) -> Any:
    """A request message built from JSON, held to the gRPC port's checks (NUL characters,
    timestamps out of range: InvalidArgument naming each field), so neither door accepts what
    the other refuses."""
    violations = request_violations(message)
    if violations:
        raise InvalidArgument(violations)
    return message
