"""HTTP spans on the loopback: the CLIENT span around each upstream request
(providers/http.open_sse: its attributes, the status of a refusal, no trace context sent to
the provider), and the HTTP edge's SERVER span per request (edge.tracing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from switchboard_core import tracing
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.edge import tracing as edge_tracing
from switchboard_router.providers.base import StallLimits, UpstreamError, UpstreamUnavailable
from switchboard_router.providers.http import create_session, open_sse

SECRET_KEY = "sk-upstream-secret"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A provider answering /ok with a short SSE stream and /busy with 429; the headers of
    every request it got."""
    seen: list[dict[str, str]] = []

    async def ok(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"x": 1}\n\n')
        await response.write_eof()
        return response

    async def busy(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"error": "slow down"}, status=429)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/busy", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def refused(status: int, body: bytes, provider: str, retry: float | None) -> UpstreamError:
    return UpstreamUnavailable("busy", provider_id=provider, status=status)


async def call(session: aiohttp.ClientSession, url: str) -> None:
    async with open_sse(
        session,
        url,
        {"messages": [{"role": "user", "content": "my prompt"}]},
        {"Authorization": f"Bearer {SECRET_KEY}"},
        provider="openai",
        timeout=5.0,
        stall=StallLimits(5.0, 5.0),
        error_from_body=refused,
    ) as stream:
        async for _ in stream.batches():
            pass
        stream.complete()


async def test_each_upstream_request_is_a_client_span_without_its_url_or_key(
    spans: InMemorySpanExporter, upstream: tuple[str, list[dict[str, str]]]
) -> None:
    base, seen = upstream
    session = create_session(UpstreamPolicy(["127.0.0.1"]))
    try:
        with tracing.tracer().start_as_current_span("chat") as parent:
            await call(session, f"{base}/ok?key={SECRET_KEY}")
            with pytest.raises(UpstreamUnavailable):
                await call(session, f"{base}/busy")
    finally:
        await session.close()
    ok, busy = [s for s in spans.get_finished_spans() if s.name == "POST"]
    port = int(base.rpartition(":")[2])
    for span in (ok, busy):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        attributes = dict(span.attributes or {})
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == port
        assert attributes["gen_ai.provider.name"] == "openai"
        assert SECRET_KEY not in repr(span.to_json())
        assert "my prompt" not in repr(span.to_json())
    assert dict(ok.attributes or {})["http.response.status_code"] == 200
    assert ok.status.status_code is trace.StatusCode.UNSET
    assert dict(busy.attributes or {})["http.response.status_code"] == 429
    assert dict(busy.attributes or {})["error.type"] == UpstreamUnavailable.reason
    assert busy.status.status_code is trace.StatusCode.ERROR
    # The trace context stays home: providers are third parties.
    assert all("traceparent" not in {k.lower() for k in headers} for headers in seen)
    assert len(seen) == 2


async def test_an_edge_request_is_a_server_span_named_by_its_route(
    spans: InMemorySpanExporter,
) -> None:
    async def models(request: web.Request) -> web.Response:
        assert tracing.current_traceparent().startswith(f"00-{TRACE_ID}-")
        return web.json_response({"data": []})

    app = web.Application(middlewares=[edge_tracing.middleware])
    app.router.add_get("/v1/models/{model}", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as client:
            headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
            async with client.get(f"{base}/v1/models/gpt-4o", headers=headers) as ok:
                assert ok.status == 200
            async with client.get(f"{base}/nowhere/{SECRET_KEY}") as missing:
                assert missing.status == 404
    finally:
        await runner.cleanup()
    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert set(by_name) == {"GET /v1/models/{model}", "GET unmatched"}
    served = by_name["GET /v1/models/{model}"]
    assert served.kind is SpanKind.SERVER
    assert served.context is not None and f"{served.context.trace_id:032x}" == TRACE_ID
    assert dict(served.attributes or {})["http.response.status_code"] == 200
    unmatched = by_name["GET unmatched"]
    assert dict(unmatched.attributes or {})["http.response.status_code"] == 404
    assert unmatched.status.status_code is trace.StatusCode.UNSET
    assert SECRET_KEY not in repr(unmatched.to_json())
