"""A Server-Sent Events parser shared by every streaming adapter (WHATWG SSE rules).

Lines end in LF, CRLF or a lone CR, as the standard allows; a CR at the end of one read waits
for the next, which may begin with its LF.

``stray=True`` keeps what the standard says to ignore: lines that are no SSE field at all
(Gemini can end an SSE stream with a raw JSON error object, not framed as an event). They come
as one ``SseEvent("raw", lines joined by LF)`` at the next blank line or the end.

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


FIELDS = (b"data", b"event", b"id", b"retry")


class _Parser:
    """Line-at-a-time SSE state: the event name and data lines seen since the last blank."""

    __slots__ = ("data", "event", "raw", "stray")

    def __init__(self, stray: bool) -> None:
        self.event = ""
        self.data: list[str] = []
        self.stray = stray
        self.raw: list[str] = []

    def line(self, line: bytes, out: list[SseEvent]) -> None:
        if not line:
            self.finish(out)
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
        elif self.stray and name not in FIELDS:
            self.raw.append(line.decode())

    def finish(self, out: list[SseEvent]) -> None:
        if self.data:
            out.append(SseEvent(self.event or "message", "\n".join(self.data)))
        if self.raw:
            out.append(SseEvent("raw", "\n".join(self.raw)))
            self.raw = []
        self.event, self.data = "", []


class _Splitter:
    """Cuts reads into lines ending in LF, CRLF or CR. A read ending in CR holds it: its LF,
    if any, is the next read's first byte and belongs to the same line end."""

    __slots__ = ("held_cr", "pending")

    def __init__(self) -> None:
        self.pending = b""
        self.held_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.held_cr:
            self.held_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        data = self.pending + chunk
        if b"\r" not in data:  # the usual case: LF endings only
            lines = data.split(b"\n")
            self.pending = lines.pop()
            return lines
        self.held_cr = data[-1:] == b"\r"
        if self.held_cr:
            data = data[:-1]  # the CR ends the last line: every piece below is a whole line
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self.pending = b"" if self.held_cr else lines.pop()
        return lines

    def rest(self) -> bytes:
        return self.pending


async def iter_sse_batches(
    chunks: AsyncIterable[bytes], *, stray: bool = False
) -> AsyncIterator[list[SseEvent]]:
    """Yield the complete events of each read, as a list (never an empty one)."""
    parser = _Parser(stray)
    splitter = _Splitter()
    async for chunk in chunks:
        batch: list[SseEvent] = []
        for line in splitter.feed(chunk):
            parser.line(line, batch)
        if batch:
            yield batch
    batch = []
    if splitter.rest():
        parser.line(splitter.rest(), batch)
    parser.finish(batch)
    if batch:
        yield batch


async def iter_sse(chunks: AsyncIterable[bytes], *, stray: bool = False) -> AsyncIterator[SseEvent]:
    """Yield events one at a time."""
    async for batch in iter_sse_batches(chunks, stray=stray):
        for event in batch:
            yield event
