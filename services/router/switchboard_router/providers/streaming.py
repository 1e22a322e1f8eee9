"""The one ``stream()`` every SSE adapter runs: open the provider's stream, read it into
canonical events, close it.

An adapter supplies only what differs (:class:`SseWire`): the request (URL, headers, body),
its error table for non-200 answers, and a fresh :class:`StreamReader` per answer that turns
one read's SSE events into canonical events. :func:`stream_sse` does the rest, the same for
every provider:

- :func:`.http.open_sse` sends the request with the endpoint's bounds (deadline, stall limits)
  and turns a non-200 answer into the adapter's :class:`UpstreamError`;
- a whole JSON body (hosts that ignore ``stream: true``) is read by :meth:`StreamReader.whole`;
- a stream is relayed read by read until the reader reports an error or a stop, or the
  connection ends; then :meth:`StreamReader.end` gives what is relayed once at the end and
  says, through :attr:`StreamReader.error`, whether the answer ended early;
- the connection goes back to the pool only when the answer completed; otherwise it is closed,
  which tells the provider to stop generating.

Every chunk passes through the loop below, so it is kept as it was in each adapter: one call
to the reader and two attribute reads per read, no allocation of its own. ``stream()`` returns
this generator itself rather than wrapping it, so there is no extra generator hop per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from switchboard_router.canonical import AdapterEvent, CompletionRequest
from switchboard_router.providers.base import Target, UpstreamError
from switchboard_router.providers.http import open_sse
from switchboard_router.providers.sse import SseEvent


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """The HTTP request for one completion: where it goes, its headers and its JSON body."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]


class StreamReader(Protocol):
    """One answer's parse state (one per request)."""

    # Set when the answer failed (by :meth:`feed`, :meth:`whole` or :meth:`end`): raised once
    # the events before it are relayed.
    error: UpstreamError | None
    # The provider said its stream is over (OpenAI's ``[DONE]``, Anthropic's
    # ``message_stop``): nothing after it is read.
    stopped: bool

    def feed(self, batch: list[SseEvent]) -> list[AdapterEvent]:
        """The canonical events of one read's SSE events."""
        ...

    def end(self) -> list[AdapterEvent]:
        """After the last read (or the one that failed): the events relayed once at the end;
        sets :attr:`error` when the answer ended before it finished."""
        ...

    def whole(self, body: bytes) -> list[AdapterEvent]:
        """Every event of a whole JSON answer; raises, or sets :attr:`error`, if it failed."""
        ...


class SseWire(Protocol):
    """What one provider's adapter supplies to :func:`stream_sse`."""

    # Whether stray lines (no SSE field at all) come to the reader as ``raw`` events
    # (see :mod:`.sse`).
    stray: bool

    def call(self, request: CompletionRequest, target: Target) -> UpstreamCall:
        """The HTTP request for ``request`` at ``target``."""
        ...

    def reader(self, provider: str) -> StreamReader:
        """A fresh reader for one answer."""
        ...

    def error_from_body(
        self, status: int, payload: bytes, provider_id: str, retry_after: float | None
    ) -> UpstreamError:
        """The error a non-200 answer's body means (see :mod:`.error_body`)."""
        ...


async def stream_sse(
    session: aiohttp.ClientSession,
    wire: SseWire,
    request: CompletionRequest,
    target: Target,
    *,
    timeout: float | None,
) -> AsyncIterator[AdapterEvent]:
    """Yield the completion's events; raise :class:`UpstreamError` on provider trouble.

    Nothing runs until the first event is asked for (the body is built then too), as with an
    adapter's own ``async def stream``."""
    call = wire.call(request, target)
    provider = target.provider_id
    async with open_sse(
        session,
        call.url,
        call.body,
        call.headers,
        provider=provider,
        timeout=timeout,
        stall=target.stall,
        error_from_body=wire.error_from_body,
    ) as upstream:
        reader = wire.reader(provider)
        if upstream.is_json:  # the whole answer at once
            events = reader.whole(await upstream.whole(provider))
            if reader.error is not None:
                raise reader.error
            for event in events:
                yield event
            upstream.complete()
            return
        async for batch in upstream.batches(stray=wire.stray):
            for event in reader.feed(batch):
                yield event
            if reader.error is not None or reader.stopped:
                break
        for event in reader.end():
            yield event
        if reader.error is not None:
            raise reader.error
        upstream.complete()
