"""The HTTP edge's listener: an aiohttp server in the router process, started after the gRPC
server and stopped with it (:class:`switchboard_core.server.GrpcServer` ``companions``).

It serves the routes of each API shape (:mod:`.openai_routes`, :mod:`.anthropic_routes`);
every route must have an owner in :data:`switchboard_core.rpc_owners.HTTP_ROUTE_RPCS` or the
edge refuses to start. TLS uses the gRPC port's certificate and key (``server.tls``); in
plaintext mode it serves plaintext. A client that goes away cancels its handler, so its
generation is cut and metered as the gRPC port's would be. Workers of the router
(:mod:`switchboard_core.workers`) share its port with ``SO_REUSEPORT``, as they share the gRPC
port.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from switchboard_core.rpc_owners import HTTP_ROUTE_RPCS
from switchboard_core.tls import TlsConfig
from switchboard_router.edge import anthropic_routes, openai_routes, tracing
from switchboard_router.edge.door import MAX_BODY_BYTES, Door
from switchboard_router.edge.openai_errors import plain_error
from switchboard_router.edge.tracing import UNMATCHED
from switchboard_router.metrics import HTTP_EDGE_REQUESTS

log = logging.getLogger(__name__)

# What a request for a route the edge does not serve is told (in OpenAI's error JSON).
NO_ROUTE = (
    "no such route: the edge serves POST /v1/chat/completions, GET /v1/models and POST /v1/messages"
)


def build_app(door: Door) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[tracing.middleware, counted])
    routes = [*openai_routes.routes(door), *anthropic_routes.routes(door)]
    _check_owned(routes)
    app.add_routes(routes)
    return app


@web.middleware
async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer counted by route template and status (a path no route serves: one
    bounded label; a stream that fails after it started counts as its 200)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED
    try:
        response = await handler(request)
    except web.HTTPException as refused:  # aiohttp's own: no such route (404), method (405)
        if refused.status not in (404, 405):
            HTTP_EDGE_REQUESTS.labels(route, str(refused.status)).inc()
            raise
        response = plain_error(refused.status, NO_ROUTE, refused.reason.lower().replace(" ", "_"))
        if "Allow" in refused.headers:
            response.headers["Allow"] = refused.headers["Allow"]
    HTTP_EDGE_REQUESTS.labels(route, str(response.status)).inc()
    return response


def _check_owned(routes: Iterable[web.RouteDef]) -> None:
    unowned = [(r.method, r.path) for r in routes if (r.method, r.path) not in HTTP_ROUTE_RPCS]
    if unowned:
        raise RuntimeError(f"HTTP routes without an owner in HTTP_ROUTE_RPCS: {unowned}")


def ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The server side of the gRPC port's TLS settings; None in plaintext mode."""
    if tls.plaintext:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:  # ssl reads a certificate chain from files
        cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert.write_bytes(tls.cert)
        key.touch(mode=0o600)
        key.write_bytes(tls.key)
        context.load_cert_chain(cert, key)
    if tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=(tls.client_ca or tls.ca).decode())
    return context


class HttpEdge:
    def __init__(
        self, door: Door, host: str, port: int, tls: TlsConfig, grace_seconds: float
    ) -> None:
        self._app = build_app(door)
        self._host = host
        self._port = port
        self._tls = tls
        self._grace = grace_seconds
        self._runner: web.AppRunner | None = None
        self.port = 0  # the bound port once started

    async def start(self, *, reuse_port: bool = False) -> None:
        runner = web.AppRunner(
            self._app, handler_cancellation=True, access_log=None, shutdown_timeout=self._grace
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self._host,
            self._port,
            ssl_context=ssl_context(self._tls),
            reuse_port=reuse_port or None,  # None: aiohttp's default (exclusive)
        )
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("serving HTTP edge", extra={"http_port": self.port})

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
