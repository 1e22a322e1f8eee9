"""The one pooled HTTP client a router process uses for every provider, and the one way
adapters open a provider's SSE stream with it.

aiohttp was chosen by measurement (``make bench-http``): 2.5 to 6 times less CPU per streamed
completion than httpx, with flat tail latency under concurrency (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from switchboard_router.providers.base import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_retry_after,
)
from switchboard_router.providers.sse import SseEvent, iter_sse_batches

# Longest silence tolerated between two bytes of a stream.
READ_IDLE_SECONDS = 120.0

# (HTTP status, body, provider id, retry-after seconds) -> the error to raise.
ErrorFromBody = Callable[[int, bytes, str, float | None], UpstreamError]


def create_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: per-request deadlines bound the work
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
        raise_for_status=False,
        auto_decompress=True,
    )


@dataclass
class SseStream:
    """An open provider stream. Call :meth:`complete` once the provider said it finished, so
    the connection goes back to the pool; otherwise it is closed on exit, which tells the
    provider to stop generating."""

    response: aiohttp.ClientResponse
    completed: bool = False

    def batches(self) -> AsyncIterator[list[SseEvent]]:
        return iter_sse_batches(self.response.content.iter_any())

    def complete(self) -> None:
        self.completed = True


@asynccontextmanager
async def open_sse(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    provider: str,
    timeout: float | None,
    error_from_body: ErrorFromBody,
) -> AsyncIterator[SseStream]:
    """POST ``body`` and yield the stream; any status but 200 raises the provider's error.

    Timeouts become ``DEADLINE_EXCEEDED`` and connection trouble ``UNAVAILABLE``, whether they
    happen before the response or while it streams.
    """
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
    try:
        response = await session.post(
            url,
            data=orjson.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_read=READ_IDLE_SECONDS),
        )
    except TimeoutError:
        raise UpstreamTimeout(f"{provider} did not answer in time", provider_id=provider) from None
    except aiohttp.ClientError as error:
        raise UpstreamUnavailable(
            f"could not reach {provider}: {type(error).__name__}", provider_id=provider
        ) from None
    stream = SseStream(response)
    try:
        if response.status != 200:
            retry = parse_retry_after(response.headers.get("retry-after"))
            raise error_from_body(response.status, await response.read(), provider, retry)
        yield stream
    except TimeoutError:
        raise UpstreamTimeout(f"{provider} stream timed out", provider_id=provider) from None
    except aiohttp.ClientError as error:
        raise UpstreamUnavailable(
            f"{provider} stream broke: {type(error).__name__}", provider_id=provider
        ) from None
    finally:
        if stream.completed:
            response.release()
        else:  # cancelled or failed: drop the connection so the provider stops generating
            response.close()


def ended_early(provider: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"{provider} stream ended before the completion finished", provider_id=provider
    )
