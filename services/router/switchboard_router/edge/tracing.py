"""The HTTP edge's SERVER span per request: an aiohttp middleware
(``web.Application(middlewares=[tracing.middleware])``).

The span is ``<METHOD> <route template>`` (``POST /v1/chat/completions``; never the raw
path), the child of the request's ``traceparent`` header
(:func:`switchboard_core.tracing.http_server_span`), current while the handler runs, so the
completion's span (:mod:`switchboard_router.genai_spans`) is its child as it is the gRPC
call's. With tracing off the middleware hands the request straight through.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from switchboard_core import tracing as core_tracing

UNMATCHED = "unmatched"  # a path no route serves: one bounded name for them all


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not core_tracing.active():
        return await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED
    with core_tracing.http_server_span(request.method, route, request.headers) as span:
        response = await handler(request)
        if span is not None:
            span.set_attribute("http.response.status_code", response.status)
        return response
