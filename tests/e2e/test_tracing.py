"""One trace across the processes: the client's call → the router's RPC → the completion →
the upstream HTTP request → the usage outbox → metering's ledger write, exported over
OTLP/HTTP to a small receiver in this test (aiohttp, decoding ``ExportTraceServiceRequest``),
with the GenAI attributes and no prompt text anywhere in what was exported.

The module's stack is its own (tests/e2e/conftest.py builds one per module): its tracing
settings reach no other module's.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.storage import free_port
from tests.e2e.support import auth, ledger_entry

pytestmark = [pytest.mark.e2e]

PROMPT = "tell nobody about the lighthouse keeper's ledger"
SERVICES = ("router", "metering", "catalog")


@dataclass
class Received:
    """Spans as the receiver got them: (service name, span), and every raw body."""

    spans: list[tuple[str, Span]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_trace(self, trace_id: bytes) -> list[tuple[str, Span]]:
        with self.lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


def _service_name(resource_attributes: Any) -> str:
    for attribute in resource_attributes:
        if attribute.key == "service.name":
            return str(attribute.value.string_value)
    return ""


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on the loopback, served from a thread of its own (the
    stack's exporters post to it whatever the test's event loop is doing)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = Received()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        with self.received.lock:
            self.received.bodies.append(body)
            for resource_spans in export.resource_spans:
                service = _service_name(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.received.spans += [(service, span) for span in scope_spans.spans]
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        assert self._started.wait(10), "the OTLP receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack_service_env(otlp: OtlpReceiver) -> dict[str, dict[str, str]]:
    """Every service of this module's stack exports its spans to the receiver, every 100 ms."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    return {service: dict(env) for service in SERVICES}


def attributes(span: Span) -> dict[str, Any]:
    def value(any_value: AnyValue) -> Any:
        kind = any_value.WhichOneof("value")
        if kind == "array_value":
            return tuple(value(v) for v in any_value.array_value.values)
        return getattr(any_value, kind) if kind else None

    return {attribute.key: value(attribute.value) for attribute in span.attributes}


async def wait_for_trace(
    receiver: OtlpReceiver, trace_id: bytes, names: set[str]
) -> list[tuple[str, Span]]:
    """The trace's spans once every span named in ``names`` has arrived (10 s at most)."""
    for _ in range(200):
        found = receiver.received.of_trace(trace_id)
        if names <= {span.name for _, span in found}:
            return found
        await asyncio.sleep(0.05)
    got = sorted({span.name for _, span in receiver.received.of_trace(trace_id)})
    raise AssertionError(f"spans missing from the trace: {sorted(names)} expected, got {got}")


def one(spans: list[tuple[str, Span]], service: str, name: str) -> Span:
    found = [span for who, span in spans if who == service and span.name == name]
    assert len(found) == 1, (service, name, [(who, s.name) for who, s in spans])
    return found[0]


async def test_one_trace_from_the_client_to_the_ledger_write(
    otlp: OtlpReceiver,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
) -> None:
    trace_id, client_span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{client_span_id.hex()}-01"
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo", messages=[message], max_tokens=8
    )
    metadata = (*auth(api_key), ("traceparent", traceparent))
    replies = [reply async for reply in router.StreamCompletion(request, metadata=metadata)]
    start, end = replies[0].start, replies[-1].end
    await ledger_entry(metering, start.generation_id)

    rpc = "switchboard.router.v1.RouterService/StreamCompletion"
    spans = await wait_for_trace(
        otlp, trace_id, {rpc, "chat switchboard/demo", "POST", "usage publish", "ledger write"}
    )
    server = one(spans, "switchboard-router", rpc)
    completion = one(spans, "switchboard-router", "chat switchboard/demo")
    upstream = one(spans, "switchboard-router", "POST")
    publish = one(spans, "switchboard-router", "usage publish")
    ledger = one(spans, "switchboard-metering", "ledger write")

    # client → router → completion → (upstream HTTP, usage outbox → ledger write)
    assert server.parent_span_id == client_span_id
    assert server.kind == Span.SPAN_KIND_SERVER
    assert completion.parent_span_id == server.span_id
    assert upstream.parent_span_id == completion.span_id
    assert upstream.kind == Span.SPAN_KIND_CLIENT
    assert publish.parent_span_id == completion.span_id
    assert publish.kind == Span.SPAN_KIND_PRODUCER
    assert ledger.parent_span_id == publish.span_id
    assert ledger.kind == Span.SPAN_KIND_CONSUMER
    # The router's calls to metering (the key's verification) are in the trace too.
    assert any(who == "switchboard-metering" and s.kind == s.SPAN_KIND_SERVER for who, s in spans)

    genai = attributes(completion)
    assert genai["gen_ai.operation.name"] == "chat"
    assert genai["gen_ai.request.model"] == "switchboard/demo"
    assert genai["gen_ai.provider.name"] == start.provider
    assert genai["gen_ai.response.id"] == start.generation_id
    assert genai["gen_ai.usage.input_tokens"] == end.usage.prompt_tokens
    assert genai["gen_ai.usage.output_tokens"] == end.usage.completion_tokens
    assert genai["gen_ai.response.finish_reasons"] == ("length",)
    http = attributes(upstream)
    assert (http["http.request.method"], http["http.response.status_code"]) == ("POST", 200)
    assert http["server.address"] == "127.0.0.1"
    assert attributes(ledger)["switchboard.ledger.source"] == "outbox"

    # Nothing exported, by any service, holds the prompt, the answer or the key.
    with otlp.received.lock:
        exported = b"".join(otlp.received.bodies)
    answer = "".join(reply.delta.text for reply in replies[1:-1])
    for secret in (PROMPT, answer, api_key.secret):
        assert secret.encode() not in exported


async def test_a_refused_call_is_traced_with_its_code_and_no_error_status(
    otlp: OtlpReceiver, router: router_pb2_grpc.RouterServiceAsyncStub
) -> None:
    trace_id = secrets.token_bytes(16)
    traceparent = f"00-{trace_id.hex()}-{secrets.token_bytes(8).hex()}-01"
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)
    request = router_pb2.CreateCompletionRequest(model="switchboard/demo", messages=[message])
    metadata = (("authorization", "Bearer sk-sb-v1-not-a-key"), ("traceparent", traceparent))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.CreateCompletion(request, metadata=metadata, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    rpc = "switchboard.router.v1.RouterService/CreateCompletion"
    server = one(await wait_for_trace(otlp, trace_id, {rpc}), "switchboard-router", rpc)
    assert attributes(server)["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert server.status.code != server.status.STATUS_CODE_ERROR  # the caller's mistake
