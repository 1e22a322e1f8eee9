"""Tracing (switchboard_core.tracing): its settings, W3C propagation, the traceparent the
ledger accepts, spans per RPC and per completion with the GenAI attributes (and never the
prompt), and nothing at all while it is off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from multidict import CIMultiDict
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core import rpc_tracing, tracing
from switchboard_core.auth import Authenticator, OperatorPrincipal, TenantPrincipal
from switchboard_core.config import ConfigError, EnvReader
from switchboard_core.errors import InvalidArgument
from switchboard_core.interceptors import ServerInterceptor, _Call
from switchboard_core.pricing import PriceSheet
from switchboard_core.tls import TlsConfig
from switchboard_core.tracing_config import TracingConfig
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_metering.event_rules import DEFAULT_RULES, check_event, validate_events
from switchboard_metering.outbox_entries import INVALID, Dead, read_entry
from switchboard_router import genai_spans
from switchboard_router.canonical import (
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    Role,
    TextPart,
    UsageReport,
)
from switchboard_router.catalog_cache import Route
from switchboard_router.relay import Completed, Started

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
PROMPT = "the secret plan is in the blue folder"


def read(env: dict[str, str]) -> TracingConfig:
    reader = EnvReader(env)
    config = TracingConfig.read(reader)
    reader.finish()
    return config


# --- settings -------------------------------------------------------------------------------


def test_tracing_is_off_without_an_endpoint() -> None:
    config = read({})
    assert not config.enabled
    assert config.sampler == "parentbased_always_on"


def test_the_base_endpoint_gets_the_traces_path_and_the_full_one_is_kept() -> None:
    assert read({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).endpoint == (
        "http://c:4318/v1/traces"
    )
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/otlp",
    }
    assert read(both).endpoint == "https://t.example/otlp"


def test_the_sdk_switch_turns_tracing_off() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not read(env).enabled


def test_a_ratio_sampler_reads_its_argument() -> None:
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    config = read(env)
    assert (config.sampler, config.ratio) == ("parentbased_traceidratio", 0.01)


def test_every_bad_setting_is_named_together() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign",
        "OTEL_TRACES_SAMPLER": "sometimes",
        "OTEL_TRACES_SAMPLER_ARG": "2",
    }
    with pytest.raises(ConfigError) as caught:
        read(env)
    named = {problem.partition(":")[0] for problem in caught.value.problems}
    assert named == {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    }


def test_exporter_headers_never_show_in_the_config_repr() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_HEADERS": "k=tok-123"}
    assert "tok-123" not in repr(read(env))


# --- the traceparent ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # another version
        PARENT + "\n",
        PARENT + "-extra",
        "x" * 10_000,
    ],
)
def test_a_malformed_traceparent_is_a_problem(value: str) -> None:
    assert tracing.traceparent_problem(value) is not None
    assert tracing.parent_of(value) is None


def test_a_traceparent_names_its_sampled_parent() -> None:
    assert tracing.traceparent_problem("") is None
    assert tracing.traceparent_problem(PARENT) is None
    parent = trace.get_current_span(tracing.parent_of(PARENT)).get_span_context()
    assert (f"{parent.trace_id:032x}", parent.is_remote) == (TRACE_ID, True)
    assert tracing.parent_of(PARENT[:-2] + "00") is None  # unsampled: nothing recorded


def usage_event(**fields: Any) -> metering_pb2.UsageEvent:
    created = Timestamp()
    created.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    return metering_pb2.UsageEvent(
        generation_id="gen-1",
        key_id="key_1",
        cost_usd="0.001",
        usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=4),
        create_time=created,
        **fields,
    )


def test_the_ledger_accepts_an_empty_or_w3c_trace_parent() -> None:
    validate_events([usage_event(), usage_event(trace_parent=PARENT)])


def test_record_usage_refuses_a_bad_trace_parent_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_events([usage_event(), usage_event(trace_parent="00-nope")])
    assert [name for name, _ in caught.value.violations] == ["events[1].trace_parent"]
    # The message names the format, never the value.
    assert "nope" not in caught.value.violations[0][1]


def test_the_outbox_dead_letters_an_event_with_a_bad_trace_parent() -> None:
    raw = usage_event(trace_parent="not-a-traceparent").SerializeToString()
    dead = read_entry(b"1-0", {EVENT_FIELD: raw}, DEFAULT_RULES, None)
    assert isinstance(dead, Dead)
    assert (dead.reason, dead.field) == (INVALID, "trace_parent")
    assert check_event(usage_event(trace_parent=PARENT), "event") == []


# --- propagation ----------------------------------------------------------------------------


def test_the_context_goes_out_in_metadata_and_comes_back(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.tracer().start_as_current_span("caller") as caller:
        pairs = tracing.inject_pairs()
    assert [name for name, _ in pairs] == ["traceparent"]
    extracted = trace.get_current_span(tracing.extract_from_metadata([("x", "y"), *pairs]))
    assert extracted.get_span_context().span_id == caller.get_span_context().span_id
    assert tracing.inject_pairs() == []  # no current span: nothing to send


def test_http_headers_carry_a_parent_case_insensitively() -> None:
    headers = CIMultiDict({"TraceParent": PARENT, "Content-Type": "application/json"})
    parent = trace.get_current_span(tracing.extract_from_headers(headers)).get_span_context()
    assert f"{parent.trace_id:032x}" == TRACE_ID
    bad = trace.get_current_span(tracing.extract_from_headers({"traceparent": "garbage"}))
    assert not bad.get_span_context().is_valid


# --- off ------------------------------------------------------------------------------------


async def test_off_nothing_is_made_and_nothing_is_wrapped() -> None:
    assert not tracing.active()

    assert rpc_tracing.start_server_span(STREAM, ANY_CONTEXT) is None
    assert rpc_tracing.client_interceptors() == []
    assert tracing.start_span("x") is None
    assert tracing.current_traceparent() == ""
    assert tracing.sampled_parents([PARENT]) == ()
    with genai_spans.completion(request(), streamed=True) as span:
        assert span is None
    with tracing.child_spans("ledger write", [PARENT]) as made:
        assert made == []


async def test_shutdown_leaves_a_tests_tracing_alone(spans: InMemorySpanExporter) -> None:
    await tracing.shutdown()
    assert tracing.active()


# --- server spans ---------------------------------------------------------------------------


KEY = "sk-sb-v1-" + "A" * 43
STREAM = "/switchboard.router.v1.RouterService/StreamCompletion"


class _Keys:
    """A key verifier answering at once (the router's warm cache)."""

    async def operator(self, secret: str) -> OperatorPrincipal:
        raise AssertionError("not used")

    async def tenant(self, secret: str) -> TenantPrincipal:
        return TenantPrincipal("key_1", "acct")


class Context:
    """What the interceptor reads of a grpc.aio servicer context; ``abort`` raises as
    grpc.aio's does."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._metadata = (("authorization", f"Bearer {KEY}"), *metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"ssl"]}

    async def abort(self, code: grpc.StatusCode, details: str, *rest: object) -> None:
        raise grpc.aio.AbortError()

    def code(self) -> None:
        return None


ANY_CONTEXT: Any = Context()


def call(method: str = STREAM) -> _Call:
    """The shared interceptor's handling of one call of ``method``."""
    return _Call(
        ServerInterceptor(Authenticator(TlsConfig(), _Keys(), direct_tenants=True)), method
    )


def completion_request() -> router_pb2.StreamCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)
    return router_pb2.StreamCompletionRequest(model="openai/gpt-4o", messages=[message])


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [span for span in exporter.get_finished_spans() if span.name == name]
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def _as_span(readable: ReadableSpan) -> trace.Span:
    assert readable.context is not None
    return trace.NonRecordingSpan(readable.context)


async def run_stream(handler: Any, context: Any) -> list[Any]:
    """Run a server-streaming handler in a task of its own, as grpc.aio does."""

    async def consume() -> list[Any]:
        return [item async for item in handler(completion_request(), context)]

    return await asyncio.create_task(consume())


async def test_an_rpc_is_a_server_span_child_of_the_callers(
    spans: InMemorySpanExporter,
) -> None:
    seen: list[str] = []

    async def behavior(request: Any, context: Any) -> AsyncIterator[str]:
        seen.append(tracing.current_traceparent())
        yield "reply"

    handler = call().stream(behavior)
    assert await run_stream(handler, Context(("traceparent", PARENT))) == ["reply"]
    span = only(spans, STREAM[1:])
    assert span.kind is SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "switchboard.router.v1.RouterService",
        "rpc.method": "StreamCompletion",
        "rpc.grpc.status_code": 0,
    }
    assert seen == [tracing.traceparent_of(_as_span(span))]  # current while it ran
    assert PROMPT not in repr(span.to_json())


async def test_a_failing_stream_marks_its_span(spans: InMemorySpanExporter) -> None:
    async def behavior(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(grpc.aio.AbortError):
        await run_stream(call().stream(behavior), Context())
    span = only(spans, STREAM[1:])
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "INTERNAL"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert span.parent is None  # no caller context: a root span


async def test_a_refused_call_is_not_the_servers_error(spans: InMemorySpanExporter) -> None:
    async def behavior(request: Any, context: Any) -> Any:
        raise InvalidArgument({"model": "unknown"})

    handler = call("/switchboard.router.v1.RouterService/CreateCompletion").unary(behavior)
    with pytest.raises(grpc.aio.AbortError):  # in a task of its own, as grpc.aio runs it
        await asyncio.create_task(handler(completion_request(), Context()))
    span = only(spans, "switchboard.router.v1.RouterService/CreateCompletion")
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == 3
    assert span.status.status_code is trace.StatusCode.UNSET


async def test_health_checks_are_not_traced(spans: InMemorySpanExporter) -> None:
    async def started(method: str) -> bool:  # in a task: the span stays current in it
        return rpc_tracing.start_server_span(method, ANY_CONTEXT) is not None

    assert not await asyncio.create_task(started("/grpc.health.v1.Health/Check"))
    assert await asyncio.create_task(started(STREAM))


async def test_calls_between_services_carry_the_context(spans: InMemorySpanExporter) -> None:
    unary, _ = rpc_tracing.client_interceptors()
    sent: list[Any] = []

    async def continuation(details: Any, request: Any) -> Any:
        sent.append(details.metadata)
        return None

    details = grpc.aio.ClientCallDetails("/m", 1.0, grpc.aio.Metadata(("a", "b")), None, None)
    with tracing.tracer().start_as_current_span("router") as current:
        await unary.intercept_unary_unary(continuation, details, None)
    metadata = sent[0]
    assert metadata["a"] == "b"
    assert metadata["traceparent"] == tracing.traceparent_of(current)


# --- the completion's span ------------------------------------------------------------------


def request() -> CompletionRequest:
    return CompletionRequest(
        model="openai/gpt-4o",
        messages=(Message(Role.USER, (TextPart(PROMPT),)),),
        max_tokens=64,
    )


def route() -> Route:
    return Route(
        endpoint_id="openai:gpt-4o",
        model_id="openai/gpt-4o",
        provider_id="openai",
        api_format=1,
        base_url="https://api.openai.com/v1",
        dialect="openai",
        upstream_model="gpt-4o-2024-08-06",
        price=PriceSheet.flat("1", "2"),
        context_length=8192,
        max_completion_tokens=0,
        supported_parameters=frozenset(),
    )


def test_the_completion_span_has_the_genai_attributes_and_no_prompt(
    spans: InMemorySpanExporter,
) -> None:
    with genai_spans.completion(request(), streamed=True) as span:
        assert span is not None
        usage_parent = tracing.current_traceparent()
        genai_spans.note(span, Started("gen-abc", route(), 0.0))
        genai_spans.note(
            span,
            Completed(FinishEvent(Finish.LENGTH, "length"), UsageReport(12, 34), Decimal("0.1")),
        )
    finished = only(spans, "chat openai/gpt-4o")
    assert finished.kind is SpanKind.INTERNAL
    assert tracing.traceparent_of(_as_span(finished)) == usage_parent
    assert dict(finished.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "openai/gpt-4o",
        "gen_ai.request.max_tokens": 64,
        "switchboard.streamed": True,
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "gen-abc",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "gen_ai.response.finish_reasons": ("length",),
    }
    assert PROMPT not in repr(finished.to_json())


def test_a_failed_completion_says_why(spans: InMemorySpanExporter) -> None:
    with (
        pytest.raises(InvalidArgument),
        genai_spans.completion(request(), streamed=False),
    ):
        raise InvalidArgument({"model": "unknown"})
    finished = only(spans, "chat openai/gpt-4o")
    assert finished.status.status_code is trace.StatusCode.ERROR
    assert finished.attributes is not None
    assert finished.attributes["error.type"] == InvalidArgument.reason


def test_a_ledger_write_is_a_span_in_each_sampled_trace(spans: InMemorySpanExporter) -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    unsampled = f"00-{'3' * 32}-{'4' * 16}-00"
    parents = tracing.sampled_parents([PARENT, "", PARENT, other, unsampled])
    assert parents == (PARENT, other, unsampled)
    with tracing.child_spans("ledger write", parents, SpanKind.CONSUMER) as made:
        assert len(made) == 2  # the unsampled trace records nothing
    traces = {f"{s.context.trace_id:032x}" for s in spans.get_finished_spans() if s.context}
    assert traces == {TRACE_ID, "1" * 32}


def test_an_edge_request_is_a_server_span_child_of_its_traceparent_header(
    spans: InMemorySpanExporter,
) -> None:
    headers = CIMultiDict({"traceparent": PARENT})
    with tracing.http_server_span("POST", "/v1/chat/completions", headers) as span:
        assert span is not None
        span.set_attribute("http.response.status_code", 200)
        inside = tracing.current_traceparent()
    with (
        pytest.raises(web.HTTPNotFound),
        tracing.http_server_span("GET", "/v1/models/{id}", {}),
    ):
        raise web.HTTPNotFound()
    with pytest.raises(RuntimeError), tracing.http_server_span("GET", "/v1/models", {}):
        raise RuntimeError("bug")
    ok = only(spans, "POST /v1/chat/completions")
    assert ok.kind is SpanKind.SERVER
    assert f"{ok.context.trace_id:032x}" == TRACE_ID and inside.startswith(f"00-{TRACE_ID}")
    missing, crashed = only(spans, "GET /v1/models/{id}"), only(spans, "GET /v1/models")
    assert dict(missing.attributes or {})["http.response.status_code"] == 404
    assert missing.status.status_code is trace.StatusCode.UNSET  # the caller's mistake
    assert crashed.status.status_code is trace.StatusCode.ERROR


def test_off_an_edge_request_costs_no_span() -> None:
    with tracing.http_server_span("POST", "/v1/chat/completions", {"traceparent": PARENT}) as s:
        assert s is None
