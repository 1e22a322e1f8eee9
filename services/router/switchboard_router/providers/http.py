"""The one pooled HTTP client a router process uses for every provider, and the one way
adapters open a provider's SSE stream with it.

aiohttp was chosen by measurement (``make bench-http``): 2.5 to 6 times less CPU per streamed
completion than httpx, with flat tail latency under concurrency (docs/BENCHMARKS.md).

Where the session may connect is the upstream address policy's call
(``switchboard_core.upstreams``), checked at connect time because the catalog's write-time
check cannot see what a name resolves to later:

- before each request, :class:`AddressPolicyMiddleware` checks the URL's scheme and host (IP
  literals included: aiohttp hands those straight to the socket without the resolver); the
  policy remembers its verdict on each host, so a known one costs a dict lookup;
- :class:`PolicyResolver` drops every resolved address the policy refuses, and refuses the
  host when none is left (DNS rebinding). The connector caches what it returns
  (``ttl_dns_cache``), so the check costs nothing per request;
- redirects are never followed (``allow_redirects=False``): a 3xx answer is an
  :class:`UpstreamRedirectRefused`, and the body is never sent anywhere else;
- the session ignores proxy variables (``trust_env`` stays off).

A refusal becomes :class:`UpstreamAddressRefused` (``UNAVAILABLE``), so the relay moves on to
the next endpoint. A connect (with its TLS handshake) that does not complete within
:data:`CONNECT_SECONDS` (a host that drops the attempts) is :class:`UpstreamUnavailable` too,
well before the completion's deadline. Logs name the host and addresses, never keys or prompts.

Stalls are timed by aiohttp's own read timer (``sock_read``), which the connection's protocol
already restarts on every read, so timing them takes no code of ours per chunk (aiohttp's
cancel and re-arm of the timer costs about 0.7 us per read on uvloop, 2 us on asyncio's loop,
measured 2026-11-30). :func:`open_sse` sets it to the endpoint's first-byte limit for the
request; once the headers are in, it becomes the idle limit for every read after the body's
first (the timer running then, started by the headers' read, still bounds the wait for that
first body byte). A silence past either limit is an :class:`UpstreamStalled` naming the
phase: ``first_byte`` before any body byte (the relay then tries the next endpoint), ``idle``
after.

When tracing is on, each request is a CLIENT span (``POST``, a child of the completion's:
``http.request.method``, ``server.address``, ``server.port``, ``http.response.status_code``,
``gen_ai.provider.name``, ``error.type`` when it failed), from the request until the stream is
closed. The URL's path and query are not recorded (a query may hold a key), and the trace
context is **not** sent to providers: a ``traceparent`` header would tell a third party this
deployment's trace ids, and nothing on their side would use it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from opentelemetry.trace import Span, SpanKind
from yarl import URL

from switchboard_core import tracing
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.providers.base import (
    StallLimits,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStalled,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_retry_after,
)
from switchboard_router.providers.error_body import MAX_ERROR_BODY_BYTES
from switchboard_router.providers.sse import SseEvent, iter_sse_batches

log = logging.getLogger(__name__)

# How long a TCP connect (with its TLS handshake) to a provider may take: a host that drops
# the connection attempts is given up for the next endpoint, not waited on until the deadline.
CONNECT_SECONDS = 10.0

# Largest whole (non-streamed) JSON answer read: far above any completion a model returns.
MAX_JSON_BODY_BYTES = 64 * 1024 * 1024

# (HTTP status, body, provider id, retry-after seconds) -> the error to raise. The body is
# cut after MAX_ERROR_BODY_BYTES + 1 bytes (:mod:`.error_body` parses none that long).
ErrorFromBody = Callable[[int, bytes, str, float | None], UpstreamError]


class UpstreamAddressRefused(UpstreamUnavailable):
    """The upstream address policy refused the endpoint's host or every address it has."""

    reason = "UPSTREAM_ADDRESS_REFUSED"


class UpstreamRedirectRefused(UpstreamUnavailable):
    """The provider answered with a redirect, which the router never follows."""

    reason = "UPSTREAM_REDIRECT_REFUSED"


class AddressRefused(aiohttp.ClientConnectionError):
    """Raised inside the session when the policy refuses a host or its addresses; the
    message says why (no secrets: hosts and addresses only)."""


class PolicyResolver(AbstractResolver):
    """Resolves with ``inner`` (the system resolver by default), keeping only the addresses
    the policy allows for the host; refuses the host when none is left."""

    def __init__(self, policy: UpstreamPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        # The system resolver (getaddrinfo in a thread), which has nothing to close.
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in found:
            if self._policy.address_allowed(host, result["host"]):
                allowed.append(result)
            else:
                refused.append(result["host"])
        if not refused:
            return found
        log.warning(
            "upstream addresses refused",
            extra={"host": host, "addresses": ",".join(sorted(set(refused)))},
        )
        if not allowed:
            raise AddressRefused(
                self._policy.address_problem(host, refused[0]) or f"{host} has no allowed address"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class AddressPolicyMiddleware:
    """Refuses a request whose URL the policy refuses, before any connection is made."""

    def __init__(self, policy: UpstreamPolicy) -> None:
        self._policy = policy

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        problem = self._policy.host_problem(request.url.scheme, request.url.raw_host or "")
        if problem is not None:
            log.warning("upstream host refused", extra={"host": request.url.raw_host})
            raise AddressRefused(problem)
        return await handler(request)


def create_session(
    policy: UpstreamPolicy,
    *,
    resolver: AbstractResolver | None = None,
    connect_seconds: float = CONNECT_SECONDS,
) -> aiohttp.ClientSession:
    """The shared session; it connects only where ``policy`` allows, each TCP (and TLS)
    connect within ``connect_seconds``. ``resolver`` replaces the system resolver under the
    policy's filter (tests)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: per-request deadlines bound the work
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
        resolver=PolicyResolver(policy, resolver),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_seconds),
        raise_for_status=False,
        auto_decompress=True,
        middlewares=(AddressPolicyMiddleware(policy),),
    )


@dataclass
class SseStream:
    """An open provider stream. Call :meth:`complete` once the provider said it finished, so
    the connection goes back to the pool; otherwise it is closed on exit, which tells the
    provider to stop generating."""

    response: aiohttp.ClientResponse
    completed: bool = False

    def batches(self, *, stray: bool = False) -> AsyncIterator[list[SseEvent]]:
        """The stream's events, read by read (``stray``: see :mod:`.sse`)."""
        return iter_sse_batches(self.response.content.iter_any(), stray=stray)

    @property
    def is_json(self) -> bool:
        """The provider answered with one whole JSON body instead of a stream (hosts that
        ignore ``stream: true``, proxies that buffer): the adapter parses it as the complete
        answer."""
        return self.response.content_type == "application/json"

    async def whole(self, provider: str) -> bytes:
        """The whole body, at most :data:`MAX_JSON_BODY_BYTES`."""
        body = bytearray()
        async for chunk in self.response.content.iter_any():
            body += chunk
            if len(body) > MAX_JSON_BODY_BYTES:
                raise UpstreamProtocolError(
                    f"{provider} answered with a JSON body over {MAX_JSON_BODY_BYTES} bytes",
                    provider_id=provider,
                )
        return bytes(body)

    def complete(self) -> None:
        self.completed = True


def open_sse(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    provider: str,
    timeout: float | None,
    stall: StallLimits,
    error_from_body: ErrorFromBody,
) -> AbstractAsyncContextManager[SseStream]:
    """POST ``body`` and yield the stream (:func:`_open_sse`), in a CLIENT span when tracing
    is on."""
    opened = _open_sse(
        session,
        url,
        body,
        headers,
        provider=provider,
        timeout=timeout,
        stall=stall,
        error_from_body=error_from_body,
    )
    if not tracing.active():
        return opened
    return _traced(opened, url, provider)


@asynccontextmanager
async def _traced(
    opened: AbstractAsyncContextManager[SseStream], url: str, provider: str
) -> AsyncIterator[SseStream]:
    target = URL(url)
    span = tracing.start_span(
        "POST",
        SpanKind.CLIENT,
        {
            "http.request.method": "POST",
            "server.address": tracing.bounded(target.host or ""),
            "server.port": target.port or 0,
            "gen_ai.provider.name": tracing.bounded(provider),
        },
    )
    assert span is not None  # tracing is on
    try:
        async with opened as stream:
            span.set_attribute("http.response.status_code", stream.response.status)
            yield stream
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        span.end()


def _failed(span: Span, error: BaseException) -> None:
    status = getattr(error, "status", 0)
    if isinstance(status, int) and status:
        span.set_attribute("http.response.status_code", status)
    if isinstance(error, GeneratorExit | asyncio.CancelledError):  # dropped: no one's fault
        return
    tracing.fail(span, error)


@asynccontextmanager
async def _open_sse(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    provider: str,
    timeout: float | None,
    stall: StallLimits,
    error_from_body: ErrorFromBody,
) -> AsyncIterator[SseStream]:
    """POST ``body`` and yield the stream; any status but 200 raises the provider's error.

    The deadline (``timeout``) becomes ``DEADLINE_EXCEEDED``, a silence past a ``stall`` limit
    :class:`UpstreamStalled` and connection trouble ``UNAVAILABLE``, whether they happen
    before the response or while it streams. A redirect is not followed (nothing is re-sent)
    and an address the policy refuses is not connected to: both ``UNAVAILABLE``.
    """
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
    try:
        response = await session.post(
            url,
            data=orjson.dumps(body),
            headers=headers,
            # A request's timeout replaces the session's whole: the connect bound is restated.
            timeout=aiohttp.ClientTimeout(
                total=timeout, sock_connect=session.timeout.sock_connect, sock_read=stall.first_byte
            ),
            allow_redirects=False,
        )
    except aiohttp.SocketTimeoutError:
        raise UpstreamStalled(provider, "first_byte", stall.first_byte) from None
    except aiohttp.ConnectionTimeoutError as error:  # a host that never completes the connect
        raise unreachable(provider, error) from None
    except TimeoutError:
        raise UpstreamTimeout(f"{provider} did not answer in time", provider_id=provider) from None
    except aiohttp.ClientError as error:
        raise unreachable(provider, error) from None
    _time_idle(response, stall.idle)
    stream = SseStream(response)
    try:
        if 300 <= response.status < 400:
            raise UpstreamRedirectRefused(
                f"{provider} answered HTTP {response.status}, a redirect: the router never"
                " follows redirects (nothing was re-sent); point the provider's base_url at"
                " the final address",
                provider_id=provider,
                status=response.status,
            )
        if response.status != 200:
            retry = parse_retry_after(response.headers.get("retry-after"))
            payload = await _read_at_most(response, MAX_ERROR_BODY_BYTES + 1)
            raise error_from_body(response.status, payload, provider, retry)
        yield stream
    except aiohttp.SocketTimeoutError:
        if response.content.total_raw_bytes:
            raise UpstreamStalled(provider, "idle", stall.idle) from None
        raise UpstreamStalled(provider, "first_byte", stall.first_byte) from None
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


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body's first ``limit`` bytes (all of it when shorter): a failed answer's body is
    read for its error message, and a provider (or whatever answers in its place) could send
    an endless one."""
    body = b""
    while len(body) < limit:
        chunk = await response.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return body


def unreachable(provider: str, error: aiohttp.ClientError) -> UpstreamUnavailable:
    """What a request that could not reach ``provider`` raises: the address policy's
    refusal, or the connection's failure (named by type, never by its text)."""
    if isinstance(error, AddressRefused):
        return UpstreamAddressRefused(
            f"the router refused to connect to {provider}: {error}", provider_id=provider
        )
    return UpstreamUnavailable(
        f"could not reach {provider}: {type(error).__name__}", provider_id=provider
    )


def _time_idle(response: aiohttp.ClientResponse, idle: float) -> None:
    """From the body's first read on, the read timer bounds silences by ``idle``. When that
    read came with the headers, the timer restarts now; else the one running (the first-byte
    limit, since the headers) ends at the first body byte, and the next starts at ``idle``."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is None:  # the whole body is in already: nothing more to wait for
        return
    protocol.read_timeout = idle
    if response.content.total_raw_bytes:
        protocol.start_timeout()
