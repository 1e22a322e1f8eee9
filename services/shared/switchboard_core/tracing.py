"""OpenTelemetry traces: set up once per process, off (the API's no-op) unless configured.

A trace follows one request from the client through the router (its gRPC or HTTP door, the
completion, each upstream HTTP request, the usage outbox) to metering's ledger write. The
W3C trace context travels in gRPC metadata (``traceparent``/``tracestate``: the shared server
interceptor extracts it and starts a SERVER span per RPC; :func:`client_interceptors` inject
it into calls between services) and in the usage event (``UsageEvent.trace_parent``), so the
ledger write is a child of the request's trace even though it runs later, in another process,
off a Redis stream. docs/TRACING.md lists the spans and their attributes.

**Settings** (:mod:`switchboard_core.tracing_config`, read once at start-up, standard names):
tracing is on when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (the base: ``/v1/traces`` is added) is set and
``OTEL_SDK_DISABLED`` is not true. Spans go out over OTLP/HTTP (protobuf) in batches, from the
SDK's background thread. The sampler is ``OTEL_TRACES_SAMPLER`` (default
``parentbased_always_on``) with ``OTEL_TRACES_SAMPLER_ARG`` (the ratio).

**Off costs nothing measurable**: no SDK tracer provider is installed, :func:`active` is a
module flag read, every helper returns at once (no span object, no context change), and the
client interceptors are not even installed on channels (``make bench``: bench/tracing_cost.py).

**What spans never carry**: prompt or completion text, API keys, provider credentials, URLs
with their query. Attribute values are cut at :data:`MAX_ATTRIBUTE_CHARS` characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import sampling as samplers
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from switchboard_core.tracing_config import SAMPLERS as SAMPLERS
from switchboard_core.tracing_config import TracingConfig as TracingConfig
from switchboard_core.tracing_config import parse_pairs

log = logging.getLogger(__name__)

SCOPE: Final = "switchboard"
MAX_ATTRIBUTE_CHARS: Final = 256
# How long stopping waits for the last spans to be exported.
SHUTDOWN_SECONDS: Final = 5.0
# The one W3C traceparent format this code writes and accepts (version 00): lower-case hex,
# neither id all zeros (checked beside the pattern).
TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
TRACEPARENT_CHARS: Final = 55
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


# --- the process's tracer -------------------------------------------------------------------


@dataclass
class _State:
    tracer: trace.Tracer
    provider: TracerProvider | None = None
    owned: bool = False  # installed by setup(): shutdown() flushes and removes it


_NOOP: Final = trace.NoOpTracer()
_state = _State(_NOOP)
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def active() -> bool:
    """Whether this process traces (an SDK provider is installed)."""
    return _state.provider is not None


def tracer() -> trace.Tracer:
    """This process's tracer: the API's no-op one when tracing is off."""
    return _state.tracer


def _sampler(config: TracingConfig) -> samplers.Sampler:
    ratio = samplers.TraceIdRatioBased(config.ratio)
    return {
        "always_on": samplers.ALWAYS_ON,
        "always_off": samplers.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": samplers.ParentBased(samplers.ALWAYS_ON),
        "parentbased_always_off": samplers.ParentBased(samplers.ALWAYS_OFF),
        "parentbased_traceidratio": samplers.ParentBased(ratio),
    }[config.sampler]


def _install(processor: SpanProcessor, service: str, sampler: samplers.Sampler) -> TracerProvider:
    provider = TracerProvider(
        sampler=sampler,
        resource=Resource({"service.name": f"switchboard-{service}"}),  # no env read
        shutdown_on_exit=False,  # shutdown() flushes, bounded
        span_limits=SpanLimits(
            max_span_attributes=64,
            max_events=16,
            max_links=64,
            max_span_attribute_length=MAX_ATTRIBUTE_CHARS,
        ),
    )
    provider.add_span_processor(processor)
    _state.provider, _state.tracer = provider, provider.get_tracer(SCOPE)
    return provider


def setup(config: TracingConfig, service: str) -> None:
    """Start tracing for this process as ``config`` says (nothing when it is off)."""
    if not config.enabled:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=config.endpoint,
        headers=parse_pairs(config.headers.reveal()) or {},
        timeout=config.timeout_seconds,
    )
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=2048,
        schedule_delay_millis=config.schedule_delay_ms,
        max_export_batch_size=512,
        export_timeout_millis=config.timeout_seconds * 1000,
    )
    _install(processor, service, _sampler(config))
    _state.owned = True
    log.info(
        "tracing on",
        # The collector's host only: a URL may carry credentials.
        extra={"sampler": config.sampler, "ratio": config.ratio, "collector": _host(config)},
    )


def _host(config: TracingConfig) -> str:
    parts = urlsplit(config.endpoint)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def configure_for_test(
    exporter: SpanExporter, service: str = "test", sampler: samplers.Sampler = samplers.ALWAYS_ON
) -> TracerProvider:
    """Trace this process into ``exporter`` synchronously (tests); undo with :func:`reset`."""
    return _install(SimpleSpanProcessor(exporter), service, sampler)


def reset() -> None:
    """Tracing off again, without flushing (tests)."""
    _state.provider, _state.tracer, _state.owned = None, _NOOP, False


async def shutdown() -> None:
    """Export what is left (at most :data:`SHUTDOWN_SECONDS`) and turn tracing off."""
    provider = _state.provider
    if provider is None or not _state.owned:  # off, or a test's: left to the test
        return
    reset()
    try:
        await asyncio.wait_for(asyncio.to_thread(provider.shutdown), SHUTDOWN_SECONDS)
    except TimeoutError:
        log.warning("tracing: the last spans were not exported in time")


# --- propagation ----------------------------------------------------------------------------


class _PairsGetter(Getter[Sequence[tuple[str, Any]]]):
    """Reads gRPC metadata: (key, value) pairs, keys lower-case."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_PAIRS: Final = _PairsGetter()


def extract_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Context:
    """The trace context a gRPC call carries (an empty context when none or malformed)."""
    return _PROPAGATOR.extract(tuple(metadata or ()), getter=_PAIRS)


def extract_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context HTTP headers carry (``traceparent``, ``tracestate``; any mapping,
    case-insensitive ones included): the parent for the HTTP edge's SERVER span."""
    carrier = {
        name: value
        for name in ("traceparent", "tracestate")
        if (value := headers.get(name)) is not None
    }
    return _PROPAGATOR.extract(carrier)


def inject_pairs() -> list[tuple[str, str]]:
    """The current trace context as metadata pairs (none without a valid current span)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return list(carrier.items())


def traceparent_of(span: Span) -> str:
    """``span``'s W3C traceparent; empty for an invalid (no-op) span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str:
    """The current span's traceparent, for a usage event; empty when tracing is off."""
    if _state.provider is None:
        return ""
    return traceparent_of(trace.get_current_span())


def traceparent_problem(value: str) -> str | None:
    """Why ``value`` is not a W3C traceparent (version 00), or None; empty is fine."""
    if not value:
        return None
    found = TRACEPARENT.fullmatch(value) if len(value) == TRACEPARENT_CHARS else None
    if found is None or found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN:
        return "empty, or a W3C traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>"
    return None


def parent_of(traceparent: str) -> Context | None:
    """The remote parent a sampled traceparent names; None when empty, invalid or unsampled
    (an unsampled trace records nothing further down)."""
    found = TRACEPARENT.fullmatch(traceparent) if len(traceparent) == TRACEPARENT_CHARS else None
    if found is None or not int(found[3], 16) & TraceFlags.SAMPLED:
        return None
    if found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN:
        return None
    span_context = SpanContext(
        int(found[1], 16),
        int(found[2], 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def bounded(value: str) -> str:
    """``value`` cut to :data:`MAX_ATTRIBUTE_CHARS` characters."""
    return value if len(value) <= MAX_ATTRIBUTE_CHARS else value[:MAX_ATTRIBUTE_CHARS]


# --- spans ----------------------------------------------------------------------------------


def start_span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Context | None = None,
) -> Span | None:
    """A span that is *not* made current (end it yourself); None when tracing is off."""
    if _state.provider is None:
        return None
    return _state.tracer.start_span(name, parent, kind, attributes)


def attach(span: Span) -> object:
    """Make ``span`` current; give the token to :func:`detach` in the same task."""
    return otel_context.attach(trace.set_span_in_context(span))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def fail(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed with ``error.type``: the error's bounded reason, else its class."""
    reason = getattr(error, "reason", None)
    kind = reason if isinstance(reason, str) and reason else type(error).__name__
    span.set_attribute("error.type", bounded(kind))
    span.set_status(trace.StatusCode.ERROR)


# At most this many spans for one batch of events (one per sampled trace it holds).
MAX_SPANS_PER_BATCH: Final = 64


def sampled_parents(traceparents: Iterable[str]) -> tuple[str, ...]:
    """The distinct traceparents worth a span in a batch's write: none when tracing is off."""
    if _state.provider is None:
        return ()
    return tuple(dict.fromkeys(p for p in traceparents if p))[:MAX_SPANS_PER_BATCH]


@contextlib.contextmanager
def child_spans(
    name: str,
    traceparents: Sequence[str],
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[list[Span]]:
    """One span per sampled traceparent, each the child of its (remote) parent, around one
    piece of work done for all of them (a batch's ledger write); none when tracing is off."""
    spans: list[Span] = []
    if _state.provider is not None:
        for traceparent in traceparents:
            parent = parent_of(traceparent)
            if parent is not None:
                spans.append(_state.tracer.start_span(name, parent, kind, attributes))
    try:
        yield spans
    except BaseException as error:
        for span in spans:
            fail(span, error)
        raise
    finally:
        for span in spans:
            span.end()


@contextlib.contextmanager
def http_server_span(method: str, route: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """The HTTP edge's SERVER span for one request, ``<method> <route>`` (``route``: the
    route's template, never the raw path), the child of the ``traceparent`` header's span
    and current while the handler runs; None when tracing is off. The handler sets
    ``http.response.status_code`` on it; an exception carrying a ``status`` (aiohttp's
    ``HTTPException``) sets it here, and 5xx or any other exception marks the span failed."""
    if _state.provider is None:
        yield None
        return
    attributes = {"http.request.method": bounded(method), "http.route": bounded(route)}
    span = _state.tracer.start_span(
        f"{bounded(method)} {bounded(route)}",
        extract_from_headers(headers),
        SpanKind.SERVER,
        attributes,
    )
    token = attach(span)
    try:
        yield span
    except BaseException as error:
        status = getattr(error, "status", None)
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        if not isinstance(status, int) or status >= 500:
            fail(span, error)
        raise
    finally:
        span.end()
        detach(token)
