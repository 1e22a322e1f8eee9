"""Tracing against a collector that accepts connections and never answers: the request path
never waits on it (spans are queued, exported by the SDK's own thread) and stopping gives up
within its bound (switchboard_core.tracing.SHUTDOWN_SECONDS)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from switchboard_core import tracing
from switchboard_core.config import EnvReader
from switchboard_core.tracing_config import TracingConfig


@pytest.fixture
async def silent_collector() -> AsyncIterator[str]:
    """An OTLP/HTTP address whose server takes the connection and the request, then nothing."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1/traces"
    for writer in held:
        writer.close()
    server.close()


async def test_a_silent_collector_never_holds_a_request_and_stopping_is_bounded(
    silent_collector: str,
) -> None:
    reader = EnvReader(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": silent_collector,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "500",  # ms
            "OTEL_BSP_SCHEDULE_DELAY": "20",  # ms: exports start at once
        }
    )
    config = TracingConfig.read(reader)
    reader.finish()
    tracing.setup(config, "test")
    try:
        assert tracing.active()
        await asyncio.sleep(0)
        started = time.monotonic()
        for i in range(3000):  # more than the queue holds: the rest are dropped, not waited on
            span = tracing.start_span("work", attributes={"i": i})
            assert span is not None
            span.end()
            if i % 500 == 0:
                await asyncio.sleep(0.05)  # the exporter's thread is stuck on the collector
        assert time.monotonic() - started < 2.0
        stopping = time.monotonic()
        await tracing.shutdown()
        assert time.monotonic() - stopping < tracing.SHUTDOWN_SECONDS + 1.0
        assert not tracing.active()
    finally:
        tracing.reset()
