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


async def test_cr_only_and_mixed_line_endings_split_anywhere() -> None:
    body = b"data: a\r\rdata: b\r\n\r\ndata: c\n\ndata: \xc3\xa9\r\r"
    whole = await collect(body)
    assert whole == [SseEvent("message", m) for m in ("a", "b", "c", "\u00e9")]
    for cut in range(1, len(body)):  # every two-read split, CR/LF pairs and characters too
        assert await collect(body[:cut], body[cut:]) == whole, cut
    assert await collect(*(body[i : i + 1] for i in range(len(body)))) == whole


async def test_stray_lines_come_as_one_raw_event_only_when_asked() -> None:
    body = b'data: {"x": 1}\n\n{\n  "error": {\n    "code": 503\n  }\n}\n'
    assert await collect(body) == [SseEvent("message", '{"x": 1}')]
    got = [e async for e in iter_sse(lines(body), stray=True)]
    assert got == [
        SseEvent("message", '{"x": 1}'),
        SseEvent("raw", '{\n  "error": {\n    "code": 503\n  }\n}'),
    ]
