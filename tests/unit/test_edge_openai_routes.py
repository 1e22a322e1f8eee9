"""The chat completions route over a real socket, with scripted completions in place of the
relay: when the status and headers are sent, what an error looks like before and after a
stream started, the deprecation header, and the counts by route and status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from decimal import Decimal
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from switchboard_core.errors import ResourceExhausted
from switchboard_core.logs import request_id_var
from switchboard_core.pricing import PriceSheet
from switchboard_router.account import AccountReads
from switchboard_router.auth import Caller
from switchboard_router.canonical import Finish, FinishEvent, TextDelta, UsageReport
from switchboard_router.catalog_cache import Route
from switchboard_router.completions import Completions, Prepared
from switchboard_router.edge import door as door_module
from switchboard_router.edge.door import Door, request_id
from switchboard_router.edge.openai_routes import CHAT
from switchboard_router.edge.server import build_app
from switchboard_router.metrics import HTTP_EDGE_REQUESTS
from switchboard_router.providers.base import UpstreamUnavailable
from switchboard_router.relay import Completed, RelayEvent, Started

ROUTE = Route(
    "p:x/y", "x/y", "p", 1, "http://h", "p", "m", PriceSheet.flat("1", "2"), 8192, 1024, frozenset()
)
EVENTS: list[RelayEvent] = [
    Started("gen-9", ROUTE, 1_700_000_000.0),
    TextDelta("Hel"),
    TextDelta("lo"),
    Completed(FinishEvent(Finish.STOP, "stop"), UsageReport(3, 2), Decimal("0.000007")),
]
BODY = {"model": "x/y", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class Scripted:
    """Completions that play ``events``, failing with ``failure`` after ``fail_after`` of them
    (or at prepare when ``fail_after`` is -1)."""

    def __init__(
        self,
        events: Sequence[RelayEvent] = EVENTS,
        failure: BaseException | None = None,
        fail_after: int | None = None,
        notice: str = "",
        delay: float = 0.0,
    ) -> None:
        self.script = events
        self.failure, self.fail_after, self.notice = failure, fail_after, notice
        self.delay = delay  # seconds of silence before the first event (a thinking model)
        self.closed = False

    async def prepare(self, request: Any, caller: Caller, remaining: float | None) -> Prepared:
        if self.fail_after == -1 and self.failure is not None:
            raise self.failure
        return cast(Prepared, None)

    async def events_of(
        self, on_deprecated: Callable[[str], None] | None
    ) -> AsyncGenerator[RelayEvent, None]:
        try:
            await asyncio.sleep(self.delay)
            for i, event in enumerate(self.script):
                if i == self.fail_after and self.failure is not None:
                    raise self.failure
                if isinstance(event, Started) and self.notice and on_deprecated:
                    on_deprecated(self.notice)
                yield event
        finally:
            self.closed = True

    def events(
        self, prepared: Prepared, *, streamed: bool, on_deprecated: Any = None
    ) -> AsyncGenerator[RelayEvent, None]:
        return self.events_of(on_deprecated)


class OpenDoor(Door):
    """Every caller is let in (the key check is the authenticator's, tested elsewhere)."""

    async def caller(self, request: web.Request) -> Caller:
        request_id_var.set(request_id(request))
        return Caller("k", "a")


async def post(completions: Scripted, body: Any = BODY) -> tuple[aiohttp.ClientResponse, bytes]:
    door = OpenDoor(cast(Completions, completions), cast(AccountReads, None), cast(Any, None))
    async with TestClient(TestServer(build_app(door))) as client:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await client.post(CHAT, data=data, headers={"X-Request-Id": "req-1"})
        return response, await response.read()


def sse(raw: bytes) -> list[Any]:
    lines = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line]
    return [line.decode() if line == b"[DONE]" else orjson.loads(line) for line in lines]


def count(code: str) -> float:
    return HTTP_EDGE_REQUESTS.labels(CHAT, code)._value.get()  # type: ignore[no-any-return]


async def test_a_stream_is_events_then_done_with_the_request_id_and_deprecation_notice() -> None:
    before = count("200")
    scripted = Scripted(notice="x/y; retires=2027-01-01")
    response, raw = await post(scripted)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["X-Request-Id"] == "req-1"
    assert response.headers["switchboard-deprecated"] == "x/y; retires=2027-01-01"
    events = sse(raw)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hello"
    assert scripted.closed and count("200") == before + 1


async def test_a_refusal_before_the_first_event_gets_its_status_and_retry_after() -> None:
    before = count("429")
    limited = ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_seconds=1.5)
    response, raw = await post(Scripted(failure=limited, fail_after=-1))
    assert response.status == 429 and response.headers["Retry-After"] == "2"
    assert response.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(raw)["error"]["type"] == "rate_limit_error"
    assert count("429") == before + 1


async def test_every_endpoint_failing_before_the_first_token_is_a_502_not_a_200() -> None:
    down = UpstreamUnavailable("provider down", provider_id="p")
    response, raw = await post(Scripted(failure=down, fail_after=0))
    assert response.status == 502
    assert orjson.loads(raw)["error"]["code"] == "upstream_unavailable"


async def test_a_failure_after_the_stream_started_is_an_error_event_without_done() -> None:
    down = UpstreamUnavailable("provider cut the stream", provider_id="p")
    scripted = Scripted(failure=down, fail_after=2)
    response, raw = await post(scripted)
    assert response.status == 200
    events = sse(raw)
    assert "[DONE]" not in events
    assert events[-1]["error"]["message"] == "provider cut the stream"
    assert scripted.closed


async def test_an_unexpected_failure_mid_stream_is_logged_and_told_as_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        response, raw = await post(Scripted(failure=RuntimeError("bug"), fail_after=2))
    assert response.status == 200
    assert sse(raw)[-1]["error"]["message"] == "internal error"
    assert "unhandled error in a stream" in caplog.text


async def test_a_whole_answer_waits_for_the_end_and_an_unexpected_error_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response, raw = await post(Scripted(), {**BODY, "stream": False})
    assert (
        response.status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"] == "Hello"
    )
    with caplog.at_level(logging.ERROR):
        response, raw = await post(
            Scripted(failure=RuntimeError("bug"), fail_after=1), {**BODY, "stream": False}
        )
    assert response.status == 500 and orjson.loads(raw)["error"]["message"] == "internal error"
    assert "bug" not in raw.decode()


@pytest.mark.parametrize(
    "raw", [b"{", b"[]", b'{"messages": [], "max_tokens": 1e400}', b'"\\u0000"']
)
async def test_bodies_that_are_no_request_are_400(raw: bytes) -> None:
    response, body = await post(Scripted(), raw)
    assert response.status == 400, body
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


async def test_a_body_over_the_limit_is_a_413_in_openai_json() -> None:
    response, body = await post(Scripted(), b" " * (32 * 1024 * 1024 + 1))
    assert response.status == 413
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


async def test_a_client_that_stops_sending_its_body_gets_a_408_not_a_held_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(door_module, "BODY_READ_SECONDS", 0.3)
    door = OpenDoor(cast(Completions, Scripted()), cast(AccountReads, None), cast(Any, None))
    async with TestServer(build_app(door)) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"model": "x/y"'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    body = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_body_timeout"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/v1/embeddings", 404, "not_found"),
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ],
)
async def test_an_unserved_route_is_json_naming_what_is_served(
    method: str, path: str, status: int, code: str
) -> None:
    door = OpenDoor(cast(Completions, Scripted()), cast(AccountReads, None), cast(Any, None))
    async with TestClient(TestServer(build_app(door))) as client:
        response = await client.request(method, path)
        body = orjson.loads(await response.read())
    assert response.status == status
    assert body["error"]["code"] == code
    assert "POST /v1/chat/completions" in body["error"]["message"]
    if status == 405:
        assert response.headers["Allow"] == "POST"
