"""A streamed answer's opening: its status and headers wait for the relay's first event, but
not forever.

A refusal before the first token deserves its real HTTP status, so a stream's headers are sent
only once the first event arrives. A thinking model may stay silent for minutes before that,
and a load balancer in front of the edge closes a connection idle for about a minute (AWS ALB
60 s, nginx 60 s). So when no event came within ``SWITCHBOARD_HTTP_KEEPALIVE_SECONDS`` (15 s),
the answer commits to 200 and sends a keep-alive line as often until the first event (an
SSE comment for OpenAI's shape, as OpenRouter does; a ``ping`` event for Anthropic's, which its
SDKs skip); a failure after that is told in the stream, as any failure after the start is.

The beats run in a task of their own, never touching the relay's events (which stay in the
handler's task: its context, its span); a lock keeps a beat and the opening from writing at
once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

# The longest a stream's client waits, without a byte, for its first event; then every beat
# (the default of SWITCHBOARD_HTTP_KEEPALIVE_SECONDS).
KEEPALIVE_SECONDS = 15.0


class Opening:
    """``open()`` at the first event; ``started`` tells whether the answer already began (a
    failure must then be told in the stream)."""

    def __init__(
        self,
        request: web.Request,
        response: Callable[[], web.StreamResponse],
        beat: bytes,
        every: float,
    ) -> None:
        self._request = request
        self._new_response = response
        self._beat = beat
        self._every = every
        self._lock = asyncio.Lock()
        self.response: web.StreamResponse | None = None
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._beats())

    @property
    def started(self) -> bool:
        return self.response is not None

    async def _start(self) -> web.StreamResponse:
        if self.response is None:
            response = self._new_response()
            await response.prepare(self._request)
            self.response = response
        return self.response

    async def _beats(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._every)
                async with self._lock:
                    await (await self._start()).write(self._beat)
        except ConnectionResetError:  # the client left: its handler is being cancelled
            return

    async def stop(self) -> None:
        """No more beats (at the first event, on a failure, on the way out). Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        async with self._lock:  # never in the middle of a beat's write
            task.cancel()
        (ended,) = await asyncio.gather(task, return_exceptions=True)  # its end, whatever it was
        if isinstance(ended, Exception):  # not the client leaving (handled above): say so
            log.warning("keep-alive beat failed", extra={"error": type(ended).__name__})

    async def open(self) -> web.StreamResponse:
        """The response, begun: now if no beat began it already."""
        await self.stop()
        return await self._start()
