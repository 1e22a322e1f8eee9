"""A Server-Sent Events parser shared by every streaming adapter (WHATWG SSE rules).

:func:`iter_sse_batches` reads whatever bytes the connection has buffered and yields every
complete event in them as one list, so an adapter can relay several events that arrived
together as one message: fewer hops per token, and no waiting for anything not yet there.
:func:`iter_sse` is the same, one event at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


class _Parser:
    """Line-at-a-time SSE state: the event name and data lines seen since the last blank."""

    __slots__ = ("data", "event")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def line(self, line: bytes, out: list[SseEvent]) -> None:
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line:
            if self.data:
                out.append(SseEvent(self.event or "message", "\n".join(self.data)))
            self.event, self.data = "", []
            return
        if line[0] == 0x3A:  # ":" starts a comment (keep-alives)
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self.data.append(value.decode())
        elif name == b"event":
            self.event = value.decode()

    def finish(self, out: list[SseEvent]) -> None:
        if self.data:
            out.append(SseEvent(self.event or "message", "\n".join(self.data)))
        self.event, self.data = "", []


async def iter_sse_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[SseEvent]]:
    """Yield the complete events of each read, as a list (never an empty one)."""
    parser = _Parser()
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        batch: list[SseEvent] = []
        for line in lines:
            parser.line(line, batch)
        if batch:
            yield batch
    batch = []
    if pending:
        parser.line(pending, batch)
    parser.finish(batch)
    if batch:
        yield batch


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """Yield events one at a time."""
    async for batch in iter_sse_batches(chunks):
        for event in batch:
            yield event
