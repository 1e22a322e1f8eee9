"""The shared adapter stream (providers/streaming.stream_sse) against a loopback provider, with
a scripted reader: what it relays and in which order, when it stops reading, what it raises,
that a failed stream's connection is dropped, and the bound on a failed answer's body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Message,
    Role,
    TextDelta,
    UsageReport,
)
from switchboard_router.providers.base import (
    Target,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from switchboard_router.providers.error_body import MAX_ERROR_BODY_BYTES
from switchboard_router.providers.http import create_session
from switchboard_router.providers.sse import SseEvent
from switchboard_router.providers.streaming import UpstreamCall, stream_sse

REQUEST = CompletionRequest(model="m/m", messages=(Message.of(Role.USER, "hi"),))
END = UsageReport(1, 2)


@dataclass
class Reader:
    """Each SSE event's data is a text delta; ``fail`` and ``stop`` data set the flags."""

    error: UpstreamError | None = None
    stopped: bool = False
    fed: list[str] = field(default_factory=list)

    def feed(self, batch: list[SseEvent]) -> list[AdapterEvent]:
        out: list[AdapterEvent] = []
        for sse in batch:
            self.fed.append(sse.data)
            if sse.data == "fail":
                self.error = UpstreamUnavailable("failed", provider_id="p")
                break
            if sse.data == "stop":
                self.stopped = True
                break
            out.append(TextDelta(sse.data))
        return out

    def end(self) -> list[AdapterEvent]:
        if self.error is None and not self.stopped:
            self.error = UpstreamUnavailable("ended early", provider_id="p")
        return [END]

    def whole(self, body: bytes) -> list[AdapterEvent]:
        if body == b'"bad"':
            self.error = UpstreamProtocolError("bad", provider_id="p")
            return [TextDelta("never relayed")]
        return [TextDelta(body.decode())]


@dataclass
class Wire:
    stray: bool = False
    readers: list[Reader] = field(default_factory=list)
    calls: int = 0
    bodies: list[tuple[int, bytes]] = field(default_factory=list)

    def call(self, request: CompletionRequest, target: Target) -> UpstreamCall:
        self.calls += 1
        return UpstreamCall(target.base_url, {"X-Test": "1"}, {"model": target.upstream_model})

    def reader(self, provider: str) -> Reader:
        self.readers.append(Reader())
        return self.readers[-1]

    def error_from_body(
        self, status: int, payload: bytes, provider_id: str, retry_after: float | None
    ) -> UpstreamError:
        self.bodies.append((status, payload))
        return UpstreamUnavailable("refused", provider_id=provider_id, status=status)


@pytest.fixture
async def provider() -> AsyncIterator[tuple[str, list[int]]]:
    """``/sse/<a,b,c>`` streams one SSE event per data item (``/open/...`` the same, then
    holds the stream open; ``/slow/...`` 10 ms apart); ``/json`` answers with a JSON
    body; ``/huge`` fails with a 500 and an endless-looking body. The client port of each
    request, to see whether a connection was reused."""
    ports: list[int] = []
    release = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for item in request.match_info["items"].split(","):
            await response.write(f"data: {item}\n\n".encode())
            if request.path.startswith("/slow/"):  # each event a read of its own
                await asyncio.sleep(0.01)
        if request.path.startswith("/open/"):  # the answer is still going
            await asyncio.wait_for(release.wait(), 5)
        await response.write_eof()
        return response

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=request.match_info["body"], content_type="application/json")

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 16384)  # 1 MiB
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/sse/{items}", sse)
    app.router.add_post("/open/{items}", sse)
    app.router.add_post("/slow/{items}", sse)
    app.router.add_post("/json/{body}", whole)
    app.router.add_post("/huge", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", ports
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as client:
        yield client


def target(url: str) -> Target:
    return Target("p", url, "model-x", Secret(""))


async def relay(
    session: aiohttp.ClientSession, wire: Wire, url: str
) -> tuple[list[AdapterEvent], UpstreamError | None]:
    events: list[AdapterEvent] = []
    try:
        async for event in stream_sse(session, wire, REQUEST, target(url), timeout=5.0):
            events.append(event)
    except UpstreamError as error:
        return events, error
    return events, None


async def test_a_stopped_stream_relays_its_events_then_the_end_and_reads_no_further(
    session: aiohttp.ClientSession, provider: tuple[str, list[int]]
) -> None:
    wire = Wire()
    events, error = await relay(session, wire, f"{provider[0]}/slow/a,b,stop,after")
    assert error is None
    assert events == [TextDelta("a"), TextDelta("b"), END]
    assert wire.readers[0].fed == ["a", "b", "stop"]


async def test_a_failed_read_relays_what_came_before_and_the_end_then_raises(
    session: aiohttp.ClientSession, provider: tuple[str, list[int]]
) -> None:
    base, ports = provider
    wire = Wire()
    events, error = await relay(session, wire, f"{base}/open/a,fail,b")
    assert events == [TextDelta("a"), END]
    assert error is not None and str(error) == "failed"
    await relay(session, wire, f"{base}/sse/c,stop")
    assert ports[0] != ports[1], "a failed stream's connection is closed, not reused"


async def test_a_stream_that_ends_without_a_stop_raises_what_end_says(
    session: aiohttp.ClientSession, provider: tuple[str, list[int]]
) -> None:
    events, error = await relay(session, Wire(), f"{provider[0]}/sse/a,b")
    assert events == [TextDelta("a"), TextDelta("b"), END]
    assert error is not None and str(error) == "ended early"


async def test_a_whole_json_answer_is_read_whole_and_its_error_relays_nothing(
    session: aiohttp.ClientSession, provider: tuple[str, list[int]]
) -> None:
    base = provider[0]
    assert await relay(session, Wire(), f"{base}/json/[1]") == ([TextDelta("[1]")], None)
    events, error = await relay(session, Wire(), f'{base}/json/"bad"')
    assert events == [] and isinstance(error, UpstreamProtocolError)


async def test_a_failed_answer_goes_to_the_wires_error_table_with_a_bounded_body(
    session: aiohttp.ClientSession, provider: tuple[str, list[int]]
) -> None:
    wire = Wire()
    events, error = await relay(session, wire, f"{provider[0]}/huge")
    assert events == [] and error is not None and error.status == 500
    [(status, payload)] = wire.bodies
    assert status == 500 and len(payload) == MAX_ERROR_BODY_BYTES + 1


async def test_nothing_is_sent_until_the_first_event_is_asked_for(
    session: aiohttp.ClientSession, provider: tuple[str, list[int]]
) -> None:
    wire = Wire()
    stream = stream_sse(session, wire, REQUEST, target(f"{provider[0]}/sse/a,stop"), timeout=5.0)
    assert wire.calls == 0 and provider[1] == []
    assert [event async for event in stream] == [TextDelta("a"), END]
    assert wire.calls == 1
