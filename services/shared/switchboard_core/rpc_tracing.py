"""Traces over gRPC: a SERVER span per RPC a service handles, and the trace context carried
on the calls it makes (:mod:`switchboard_core.tracing` has the settings and the rest).

The shared server interceptor starts a SERVER span as it admits each call
(:func:`start_server_span`) and ends it with the call's code (:func:`end_server_span`),
adding no layer around the handler (a streamed reply pays nothing per message). The span's
parent is the ``traceparent`` in the call's metadata (a client's, or another service's),
its name ``<package.Service>/<Method>``, its attributes the RPC semantic conventions'
(``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``), and it is
current while the handler runs, so the spans the handler starts are its children. Health
checks and reflection are not traced (probes would fill the traces).

Calls between services carry the current context (:func:`client_interceptors`, installed by
:func:`switchboard_core.channels.service_channel` only while tracing is on); no CLIENT span
is made for them: the callee's SERVER span is the child of the caller's current span.
"""

from __future__ import annotations

from typing import Any, Final

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from switchboard_core import tracing

UNTRACED_PREFIXES: Final = ("/grpc.health.", "/grpc.reflection.")
# Server spans of these codes are errors (the RPC semantic conventions); the others are
# the caller's (refused, not found, limits) and leave the status unset.
SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_CODES: Final = {code.name: code for code in grpc.StatusCode}

Context = grpc.aio.ServicerContext[Any, Any]


def start_server_span(method: str, context: Context) -> Span | None:
    """Start the call's SERVER span and make it current for the rest of the call's task
    (grpc.aio serves each call in a task of its own, which ends with it; the interceptor sets
    the request id the same way). None when tracing is off or ``method`` is not traced."""
    if not tracing.active() or method.startswith(UNTRACED_PREFIXES):
        return None
    service, _, name = method[1:].rpartition("/")
    parent = tracing.extract_from_metadata(context.invocation_metadata())
    span = tracing.tracer().start_span(
        method[1:],
        parent,
        SpanKind.SERVER,
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    tracing.attach(span)
    return span


def end_server_span(span: Span, code_name: str) -> None:
    """End the call's span with its status code (``grpc.StatusCode`` name)."""
    code = _CODES.get(code_name, grpc.StatusCode.UNKNOWN)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERRORS:
        span.set_attribute("error.type", code.name)
        span.set_status(trace.StatusCode.ERROR)
    span.end()


class _Inject:
    """Adds the current trace context to a call's metadata (nothing without a span)."""

    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        pairs = tracing.inject_pairs()
        if not pairs:
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*(details.metadata or ()), *pairs),
            details.credentials,
            details.wait_for_ready,
        )


# grpc.aio files an interceptor under the first call type it implements only.
class _UnaryInject(_Inject, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamInject(_Inject, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def client_interceptors() -> list[Any]:
    """Interceptors carrying the trace context on a channel's calls; none when tracing is
    off (a channel made then never pays for them)."""
    if not tracing.active():
        return []
    return [_UnaryInject(), _StreamInject()]
