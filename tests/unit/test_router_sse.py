"""The shared SSE parser follows the WHATWG rules the providers rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator

from switchboard_router.providers.sse import SseEvent, iter_sse


async def lines(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def collect(*items: bytes) -> list[SseEvent]:
    return [event async for event in iter_sse(lines(*items))]


async def test_data_events_split_on_blank_lines() -> None:
    events = await collect(b"data: one\n", b"\n", b"data: two\n", b"\n")
    assert events == [SseEvent("message", "one"), SseEvent("message", "two")]


async def test_comments_and_keepalives_are_skipped() -> None:
    events = await collect(b": OPENROUTER PROCESSING\n", b"\n", b"data: x\n", b"\n", b":\n")
    assert events == [SseEvent("message", "x")]


async def test_event_names_multiline_data_and_crlf() -> None:
    events = await collect(
        b"event: content_block_delta\r\n", b'data: {"a":\r\n', b"data: 1}\r\n", b"\r\n"
    )
    assert events == [SseEvent("content_block_delta", '{"a":\n1}')]


async def test_value_without_space_and_trailing_event_without_blank_line() -> None:
    events = await collect(b"data:tight\n", b"\n", b"data: last\n")
    assert events == [SseEvent("message", "tight"), SseEvent("message", "last")]


async def test_event_name_resets_after_each_event() -> None:
    events = await collect(b"event: ping\n", b"data: {}\n", b"\n", b"data: after\n", b"\n")
    assert events == [SseEvent("ping", "{}"), SseEvent("message", "after")]


async def test_events_split_across_reads_and_batched_per_read() -> None:
    from switchboard_router.providers.sse import iter_sse_batches

    reads = [b"data: a\n\nda", b"ta: b\n", b"\ndata: c\n\ndata: d\n\n", b"data: tail"]
    batches = [b async for b in iter_sse_batches(lines(*reads))]
    assert batches == [
        [SseEvent("message", "a")],
        [SseEvent("message", "b"), SseEvent("message", "c"), SseEvent("message", "d")],
        [SseEvent("message", "tail")],
    ]
