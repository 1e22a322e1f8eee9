"""Upstream stalls are timed, over real HTTP with the real relay, adapters and session.

- An upstream that accepts and never answers (a fresh connection, or a pooled keep-alive one
  whose first request went fine) is given up within the first-byte limit, and the relay falls
  back to the next endpoint.
- A stream that goes silent after its first tokens ends ``UNAVAILABLE``/``UPSTREAM_STALLED``
  naming the provider within the idle limit, and the cut generation is metered for what was
  delivered. The same for every adapter (OpenAI, Anthropic, Gemini), and for a whole-JSON
  answer that stops halfway.
- The catalog's limits win over the router's: endpoint, then model, then the default; a slow
  thinker with a longer model limit gets through.
- Every stall is counted by provider and phase and told to the relay's attempt observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import grpc
import pytest
import redis.asyncio as redis
from aiohttp import web
from prometheus_client import REGISTRY

from switchboard.catalog.v1 import catalog_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard_core.budget import BudgetStore
from switchboard_core.config import Secret
from switchboard_core.pricing import PriceSheet
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_core.usage_outbox import EVENT_FIELD
from switchboard_router.admission import Admission
from switchboard_router.auth import Caller
from switchboard_router.canonical import (
    CompletionRequest,
    Message,
    ReasoningConfig,
    ReasoningEffort,
    Role,
    TextDelta,
)
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.providers.base import (
    StallLimits,
    UpstreamError,
    UpstreamStalled,
    UpstreamUnavailable,
)
from switchboard_router.providers.credentials import ProviderCredentials
from switchboard_router.providers.http import create_session, open_sse
from switchboard_router.providers.registry import build_adapters
from switchboard_router.relay import Completed, Relay, RelayEvent, Started
from switchboard_router.usage_sink import UsageSink
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.script import Script

REQUEST = CompletionRequest(model="x/y", messages=(Message.of(Role.USER, "hi"),), max_tokens=64)
OPENAI = catalog_pb2.API_FORMAT_OPENAI_CHAT
FORMATS = {
    "openai": (OPENAI, openai_server.serve),
    "anthropic": (catalog_pb2.API_FORMAT_ANTHROPIC_MESSAGES, anthropic_server.serve),
    "google": (catalog_pb2.API_FORMAT_GEMINI, gemini_server.serve),
}
PROVIDERS = ["openai", "anthropic", "google", "silent", "backup"]
SHORT = StallLimits(first_byte=0.5, idle=0.5)


def route(provider_id: str, api_format: int, base_url: str, stall: StallLimits = SHORT) -> Route:
    return Route(
        endpoint_id=f"{provider_id}:x/y",
        model_id="x/y",
        provider_id=provider_id,
        api_format=api_format,
        base_url=base_url,
        dialect=provider_id,
        upstream_model="m",
        price=PriceSheet.flat("1", "2"),
        context_length=8192,
        max_completion_tokens=1024,
        supported_parameters=frozenset(),
        stall=stall,
    )


class Attempts:
    """The relay's attempt observer: (provider, reason or "ok") per report."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def first_token(self, attempt: Route, seconds: float) -> None:
        self.seen.append((attempt.provider_id, "ok"))

    def failed(self, attempt: Route, error: UpstreamError, *, started: bool) -> None:
        self.seen.append((attempt.provider_id, error.reason))

    def finished(self, attempt: Route, completion_tokens: int, seconds: float) -> None:
        pass


@asynccontextmanager
async def relay_for(
    redis_client: redis.Redis, stream: str, attempts: Attempts
) -> AsyncIterator[Relay]:
    session = create_session(UpstreamPolicy(["127.0.0.1"]))
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never reached: the outbox answers
    credentials = ProviderCredentials(
        {p: Secret("sk-test") for p in PROVIDERS}, {p: ["127.0.0.1"] for p in PROVIDERS}
    )
    admission = Admission(BudgetStore(redis_client, stream + ":budget:"), 4096, 60)
    sink = UsageSink(redis_client, stream, channel)
    try:
        yield Relay(build_adapters(session), credentials, sink, admission, observer=attempts)
    finally:
        await session.close()
        await channel.close(None)


@pytest.fixture
def stream(redis_prefix: str) -> str:
    return f"{redis_prefix}usage-stalls-{uuid.uuid4().hex}"


async def run(
    relay: Relay, routes: list[Route], into: list[RelayEvent], request: CompletionRequest = REQUEST
) -> None:
    caller = Caller(key_id="key-1", account_id="account-1")
    async for event in relay.run(request, routes, caller, timeout=30, streamed=True):
        into.append(event)


async def published(client: redis.Redis, stream: str) -> list[metering_pb2.UsageEvent]:
    for _ in range(100):  # a cut generation's event is written in the background
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
        if entries:
            return [metering_pb2.UsageEvent.FromString(f[EVENT_FIELD]) for _, f in entries]
        await asyncio.sleep(0.05)
    return []


def stalls(provider: str, phase: str) -> float:
    labels = {"provider": provider, "phase": phase}
    return REGISTRY.get_sample_value("switchboard_router_upstream_stalls_total", labels) or 0.0


@asynccontextmanager
async def silent_server(answer_first: bytes = b"") -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server that reads requests and never answers; with ``answer_first``, it answers
    each connection's first request with those bytes (keeping the connection open) and goes
    silent from the second on. Yields its base URL and [connections, requests]."""
    counts = [0, 0]
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts[0] += 1
        held.append(writer)
        answered = False
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            counts[1] += 1
            if answer_first and not answered:
                answered = True
                writer.write(answer_first)
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", counts
    finally:
        for writer in held:
            writer.close()
        server.close()


@pytest.mark.parametrize("provider", list(FORMATS))
async def test_an_upstream_that_never_answers_falls_back_within_the_first_byte_limit(
    provider: str, redis_client: redis.Redis, stream: str
) -> None:
    attempts = Attempts()
    before = stalls(provider, "first_byte")
    events: list[RelayEvent] = []
    async with (
        silent_server() as (silent_url, counts),
        openai_server.serve(Script()) as backup,
        relay_for(redis_client, stream, attempts) as relay,
    ):
        started = time.monotonic()
        await run(
            relay,
            [
                route(provider, FORMATS[provider][0], silent_url),
                route("backup", OPENAI, backup.base_url),
            ],
            events,
        )
        elapsed = time.monotonic() - started
    assert counts == [1, 1]  # the request did reach the silent upstream
    assert isinstance(events[0], Started) and events[0].route.provider_id == "backup"
    assert isinstance(events[-1], Completed)
    assert 0.4 < elapsed < 2.0  # the first-byte limit (0.5 s), not aiohttp's old 120 s
    assert stalls(provider, "first_byte") == before + 1
    assert attempts.seen == [(provider, "UPSTREAM_STALLED"), ("backup", "ok")]


def keepalive_answer() -> bytes:
    """A whole OpenAI stream with a Content-Length, so the connection goes back to the pool."""
    playlist = openai_server.render_stream(Script(), "m", include_usage=True)
    events = [*playlist.head, *(e for item in playlist.content for e in item), *playlist.tail]
    body = b"".join(event.encode() for event in events)
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def test_a_pooled_connection_gone_silent_falls_back_within_the_first_byte_limit(
    redis_client: redis.Redis, stream: str
) -> None:
    attempts = Attempts()
    async with (
        silent_server(keepalive_answer()) as (url, counts),
        openai_server.serve(Script()) as backup,
        relay_for(redis_client, stream, attempts) as relay,
    ):
        routes = [route("openai", OPENAI, url), route("backup", OPENAI, backup.base_url)]
        first: list[RelayEvent] = []
        await run(relay, routes, first)
        assert isinstance(first[0], Started) and first[0].route.provider_id == "openai"
        second: list[RelayEvent] = []
        started = time.monotonic()
        await run(relay, routes, second)
        elapsed = time.monotonic() - started
    assert counts == [1, 2]  # one connection: the second request went on the pooled one
    assert isinstance(second[0], Started) and second[0].route.provider_id == "backup"
    assert isinstance(second[-1], Completed)
    assert elapsed < 2.0
    assert attempts.seen[-2:] == [("openai", "UPSTREAM_STALLED"), ("backup", "ok")]


@pytest.mark.parametrize("provider", list(FORMATS))
async def test_a_stream_silent_after_its_first_tokens_ends_unavailable_and_is_metered(
    provider: str, redis_client: redis.Redis, stream: str
) -> None:
    attempts = Attempts()
    before = stalls(provider, "idle")
    events: list[RelayEvent] = []
    api_format, serve = FORMATS[provider]
    script = Script(text=("Hello", " there", " and", " more"), stall_after=2)
    async with (
        serve(script) as fake,
        openai_server.serve(Script()) as backup,
        relay_for(redis_client, stream, attempts) as relay,
    ):
        routes = [
            route(provider, api_format, fake.base_url),
            route("backup", OPENAI, backup.base_url),
        ]
        started = time.monotonic()
        with pytest.raises(UpstreamStalled) as raised:
            await run(relay, routes, events)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(fake.disconnected.wait(), 2)  # the upstream was hung up on
        assert backup.requests == []  # committed after the first token: no fallback
    error = raised.value
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "UPSTREAM_STALLED"
    assert provider in error.message and "idle" in error.message
    assert error.metadata["provider"] == provider and error.metadata["stall_phase"] == "idle"
    assert elapsed < 2.0
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there"
    rows = await published(redis_client, stream)
    assert [r.status for r in rows] == [metering_pb2.GENERATION_STATUS_FAILED]
    assert 0 < rows[0].usage.completion_tokens <= 4  # what was delivered: two short pieces
    assert stalls(provider, "idle") == before + 1
    assert attempts.seen == [(provider, "ok"), (provider, "UPSTREAM_STALLED")]


async def test_a_whole_json_answer_that_stops_halfway_falls_back(
    redis_client: redis.Redis, stream: str
) -> None:
    async def half(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 4096
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-1", "choices": [')
        await asyncio.Event().wait()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", half)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    attempts = Attempts()
    events: list[RelayEvent] = []
    try:
        async with (
            openai_server.serve(Script()) as backup,
            relay_for(redis_client, stream, attempts) as relay,
        ):
            started = time.monotonic()
            await run(
                relay,
                [
                    route("openai", OPENAI, f"http://127.0.0.1:{port}/v1"),
                    route("backup", OPENAI, backup.base_url),
                ],
                events,
            )
            elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert isinstance(events[0], Started) and events[0].route.provider_id == "backup"
    assert elapsed < 2.0
    assert attempts.seen == [("openai", "UPSTREAM_STALLED"), ("backup", "ok")]


def catalog_message(
    base_url: str, model_limits: dict[str, int], endpoint_limits: dict[str, int]
) -> catalog_pb2.WatchCatalogResponse:
    endpoint = catalog_pb2.Endpoint(
        id="openai:x/y",
        model_id="x/y",
        provider_id="openai",
        upstream_model="m",
        stall_limits=catalog_pb2.StallLimits(**endpoint_limits),
    )
    endpoint.pricing.prompt_usd_per_mtok = "1"
    endpoint.pricing.completion_usd_per_mtok = "2"
    return catalog_pb2.WatchCatalogResponse(
        version=1,
        providers=[catalog_pb2.Provider(id="openai", api_format=OPENAI, base_url=base_url)],
        models=[
            catalog_pb2.Model(
                id="x/y",
                context_length=8192,
                endpoints=[endpoint],
                stall_limits=catalog_pb2.StallLimits(**model_limits),
            )
        ],
    )


def resolved(model: dict[str, int], endpoint: dict[str, int]) -> StallLimits:
    message = catalog_message("http://127.0.0.1:9/v1", model, endpoint)
    return Snapshot.from_proto(message, stall=SHORT).routes["x/y"][0].stall


def test_the_most_specific_limit_wins_endpoint_then_model_then_the_router() -> None:
    assert resolved({}, {}) == SHORT
    assert resolved({"first_byte_ms": 3000}, {}) == StallLimits(3.0, 0.5)
    assert resolved({"first_byte_ms": 3000, "idle_ms": 4000}, {"idle_ms": 700}) == StallLimits(
        3.0, 0.7
    )
    assert resolved({"first_byte_ms": 3000}, {"first_byte_ms": 250}) == StallLimits(0.25, 0.5)


async def slow_thinker(
    model: dict[str, int], endpoint: dict[str, int], redis_client: redis.Redis, stream: str
) -> tuple[list[RelayEvent], UpstreamStalled | None]:
    """A provider silent 1 s before answering, behind the router's 0.5 s default."""
    events: list[RelayEvent] = []
    async with (
        openai_server.serve(Script(headers_delay=1.0)) as fake,
        relay_for(redis_client, stream, Attempts()) as relay,
    ):
        snapshot = Snapshot.from_proto(catalog_message(fake.base_url, model, endpoint), stall=SHORT)
        try:
            await run(relay, list(snapshot.routes["x/y"]), events)
        except UpstreamStalled as error:
            return events, error
    return events, None


async def test_a_longer_model_limit_lets_a_slow_thinker_through(
    redis_client: redis.Redis, stream: str
) -> None:
    events, error = await slow_thinker({}, {}, redis_client, stream)
    assert error is not None and error.phase == "first_byte"  # the default is too short
    events, error = await slow_thinker({"first_byte_ms": 3000}, {}, redis_client, stream)
    assert error is None and isinstance(events[-1], Completed)
    # The endpoint's own limit beats its model's.
    events, error = await slow_thinker(
        {"first_byte_ms": 3000}, {"first_byte_ms": 300}, redis_client, stream
    )
    assert error is not None and error.limit == 0.3


THINKING = StallLimits(first_byte=3.0, idle=3.0)


def thinking_resolved(model: dict[str, int], endpoint: dict[str, int]) -> StallLimits:
    message = catalog_message("http://127.0.0.1:9/v1", model, endpoint)
    return (
        Snapshot.from_proto(message, stall=SHORT, thinking=THINKING).routes["x/y"][0].thinking_stall
    )


def test_a_thinking_request_gets_the_thinking_defaults_under_the_catalogs_limits() -> None:
    assert thinking_resolved({}, {}) == THINKING
    # What the catalog sets still wins, field by field.
    assert thinking_resolved({"first_byte_ms": 1000}, {}) == StallLimits(1.0, 3.0)
    assert thinking_resolved({}, {"idle_ms": 700}) == StallLimits(3.0, 0.7)
    assert ReasoningConfig(effort=ReasoningEffort.HIGH).thinks
    assert ReasoningConfig().thinks  # the provider's default amount of thinking
    assert not ReasoningConfig(effort=ReasoningEffort.NONE).thinks
    assert not ReasoningConfig(enabled=False).thinks


async def test_a_request_that_asks_to_think_waits_the_thinking_limit(
    redis_client: redis.Redis, stream: str
) -> None:
    """A provider silent 1 s: past the 0.5 s default, within the 3 s thinking default."""
    thinking = CompletionRequest(
        model="x/y",
        messages=(Message.of(Role.USER, "hi"),),
        max_tokens=64,
        reasoning=ReasoningConfig(effort=ReasoningEffort.HIGH),
    )
    async with (
        openai_server.serve(Script(headers_delay=1.0)) as fake,
        relay_for(redis_client, stream, Attempts()) as relay,
    ):
        message = catalog_message(fake.base_url, {}, {})
        routes = list(Snapshot.from_proto(message, stall=SHORT, thinking=THINKING).routes["x/y"])
        with pytest.raises(UpstreamStalled):
            await run(relay, routes, [])
        events: list[RelayEvent] = []
        await run(relay, routes, events, thinking)
    assert isinstance(events[-1], Completed)


@asynccontextmanager
async def unconnectable() -> AsyncIterator[str]:
    """A URL whose host never completes a TCP connect: a listener that never accepts, its
    accept queue filled, so the kernel drops further connection attempts (a silent peer, as a
    firewall that drops packets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_a_host_that_never_completes_the_connect_is_given_up_within_the_connect_bound() -> (
    None
):
    async with (
        unconnectable() as url,
        create_session(UpstreamPolicy(["127.0.0.1"]), connect_seconds=0.3) as session,
    ):
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as raised:
            async with open_sse(
                session,
                f"{url}/chat/completions",
                {"model": "m"},
                {},
                provider="dropping",
                timeout=30.0,  # the completion's deadline: far longer
                stall=StallLimits(first_byte=30.0, idle=30.0),
                error_from_body=lambda status, body, provider, retry: UpstreamUnavailable(
                    "unexpected answer", provider_id=provider
                ),
            ):
                pass
        elapsed = time.monotonic() - started
    assert type(raised.value) is UpstreamUnavailable  # unreachable: the relay tries the next
    assert "ConnectionTimeoutError" in str(raised.value)
    assert elapsed < 2.0  # the connect bound, not the 30-s deadline or stall limit
