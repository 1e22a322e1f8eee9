"""A local HTTP server that replays scripted responses, for provider error cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ScriptedServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


def sse_body(*events: str) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events)


@asynccontextmanager
async def scripted_server(handler: Handler) -> AsyncIterator[ScriptedServer]:
    """Serve ``handler`` at ``POST /v1/chat/completions``; yields the base URL ``.../v1``."""
    state = ScriptedServer(url="")

    async def record(request: web.Request) -> web.StreamResponse:
        state.requests.append(await request.json())
        try:
            return await handler(request)
        except (ConnectionResetError, asyncio.CancelledError):
            state.disconnected.set()
            raise

    app = web.Application()
    app.router.add_post("/v1/chat/completions", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        await runner.cleanup()
