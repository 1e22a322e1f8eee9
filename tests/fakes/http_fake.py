"""What every fake provider shares: the aiohttp server, request recording, disconnect
detection, fault injection, and playing a rendered stream with the Script's delays, failures
and cuts.

A provider module renders a :class:`~tests.fakes.script.Script` into a :class:`Playlist` of
SSE events (its own wire format); :func:`play` sends it. Each generation request (a POST
route) first draws its fault from the fake's :class:`~tests.fakes.faults.FaultInjector`:
resets and hangs happen here, before the provider's handler; an error or a stall becomes the
request's own Script (:func:`script_for`), which the handler renders in its wire format; the
time to first token and the chunk spacing are played by :func:`play`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.faults import NO_FAULTS, Fault, Faults
from tests.fakes.script import FakeProvider, RecordedRequest, Script

Handler = Callable[[web.Request, Any, FakeProvider], Awaitable[web.StreamResponse]]
# Where a generation request keeps its drawn Fault (aiohttp requests are mappings).
FAULT = web.RequestKey("fault", Fault)


@dataclass(frozen=True)
class Sse:
    data: str
    event: str = ""

    def encode(self, newline: str = "\n") -> bytes:
        head = f"event: {self.event}{newline}" if self.event else ""
        return f"{head}data: {self.data}{newline}{newline}".encode()


def sse(data: Any, event: str = "") -> Sse:
    return Sse(data if isinstance(data, str) else orjson.dumps(data).decode(), event)


@dataclass
class Playlist:
    head: list[Sse] = field(default_factory=list)
    # One item per content chunk (text piece or tool-call piece); an item may be several events.
    content: list[list[Sse]] = field(default_factory=list)
    tail: list[Sse] = field(default_factory=list)
    # Sent instead of the rest after Script.fail_after content chunks.
    failure: list[Sse] = field(default_factory=list)
    keepalive: bytes = b": keep-alive\n\n"  # what `odd` slips between events
    newline: str = "\n"


def fault_of(request: web.Request) -> Fault | None:
    """The fault drawn for this request (None for routes that draw none)."""
    return request.get(FAULT)


def script_for(request: web.Request, fake: FakeProvider) -> Script:
    """What this request gets: the fake's Script, with the request's drawn error or stall."""
    fault = fault_of(request)
    if fault is None or fault.outcome not in ("error", "stall"):
        return fake.script
    if fault.outcome == "stall":
        return dataclasses.replace(fake.script, stall_after=fault.faults.stall_after)
    return dataclasses.replace(
        fake.script,
        status=fault.faults.error_status,
        retry_after=fault.faults.retry_after,
        error_message=f"injected {fault.faults.error_status}",
    )


async def play(request: web.Request, fake: FakeProvider, playlist: Playlist) -> web.StreamResponse:
    script = script_for(request, fake)
    fault = fault_of(request)
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    if fault is not None and (delay := fault.first_token_delay()):
        await asyncio.sleep(delay)  # headers are out; the first event is not

    async def send(event: Sse) -> None:
        data = event.encode(playlist.newline)
        if script.odd:
            if playlist.keepalive:
                await response.write(playlist.keepalive)
            half = len(data) // 2
            await response.write(data[:half])
            await asyncio.sleep(0)
            await response.write(data[half:])
        else:
            await response.write(data)

    for event in playlist.head:
        await send(event)
    for sent, item in enumerate(playlist.content):
        if script.fail_after is not None and sent == script.fail_after:
            for event in playlist.failure:
                await send(event)
            await response.write_eof()
            fake.finished_at = asyncio.get_running_loop().time()
            return response
        if script.cut_after is not None and sent == script.cut_after:
            cut(request, fake)
            return response
        if script.stall_after is not None and sent == script.stall_after:
            await asyncio.Event().wait()  # silent until the client disconnects (cancelled)
        if script.chunk_delay:
            await asyncio.sleep(script.chunk_delay)
        if sent and fault is not None and (gap := fault.chunk_gap()):
            await asyncio.sleep(gap)
        for event in item:
            await send(event)
    if script.cut_after is not None and script.cut_after >= len(playlist.content):
        cut(request, fake)
        return response
    for event in playlist.tail:
        await send(event)
    await response.write_eof()
    fake.finished_at = asyncio.get_running_loop().time()
    return response


def cut(request: web.Request, fake: FakeProvider) -> None:
    """Drop the connection without finishing the response."""
    if request.transport is not None:
        request.transport.close()
    fake.finished_at = asyncio.get_running_loop().time()


def reset(request: web.Request) -> web.Response:
    """Reset the connection (RST, no response byte): SO_LINGER 0, then abort."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never sent: the connection is gone


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


@asynccontextmanager
async def serve_routes(
    script: Script,
    prefix: str,
    routes: list[tuple[str, Handler]],
    faults: Faults = NO_FAULTS,
) -> AsyncIterator[FakeProvider]:
    """Serve POST ``routes`` (paths under ``prefix``; a path written ``"GET /models"`` is
    served for GET); yields the fake with ``base_url`` set and ``faults`` injected (POST
    routes draw them)."""
    fake = FakeProvider(base_url="", script=script)
    fake.inject(faults)

    def wrap(
        handler: Handler, method: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            body = orjson.loads(raw) if raw else None
            fake.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                )
            )
            fault = fake.faults.draw() if method == "POST" else None
            if fault is not None:
                request[FAULT] = fault
                if fault.outcome == "reset":
                    return reset(request)
            try:
                if fault is not None and fault.outcome == "hang":
                    await asyncio.Event().wait()  # until the client leaves (cancelled)
                if fake.script.headers_delay:
                    await asyncio.sleep(fake.script.headers_delay)
                return await handler(request, body, fake)
            except (ConnectionResetError, asyncio.CancelledError):
                fake.disconnected_at = asyncio.get_running_loop().time()
                fake.disconnected.set()
                raise

        return handle

    app = web.Application(client_max_size=64 * 1024 * 1024)
    for route, handler in routes:
        method, _, path = route.rpartition(" ")
        app.router.add_route(method or "POST", prefix + path, wrap(handler, method or "POST"))
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}{prefix}"
    try:
        yield fake
    finally:
        await runner.cleanup()
