"""A stream whose first event is slow: its answer begins with keep-alive lines (an SSE comment
for OpenAI's shape, ``ping`` for Anthropic's) rather than leaving the connection idle past a
load balancer's timeout, and a failure after that is told in the stream. A fast refusal still
gets its real status."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
import orjson
from aiohttp.test_utils import TestClient, TestServer

from switchboard_core.errors import ResourceExhausted
from switchboard_router.account import AccountReads
from switchboard_router.completions import Completions
from switchboard_router.edge.server import build_app
from tests.unit.test_edge_openai_routes import BODY, OpenDoor, Scripted, sse

BEAT = 0.1
ANTHROPIC_BODY = {
    "model": "x/y",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}


async def post(
    completions: Scripted, path: str, body: dict[str, Any]
) -> tuple[aiohttp.ClientResponse, bytes]:
    door = OpenDoor(cast(Completions, completions), cast(AccountReads, None), cast(Any, None), BEAT)
    async with TestClient(TestServer(build_app(door))) as client:
        response = await client.post(path, data=orjson.dumps(body))
        return response, await response.read()


def beats_then(raw: bytes, beat: bytes) -> tuple[int, bytes]:
    """How many beats open ``raw``, and what follows them."""
    count = 0
    while raw.startswith(beat):
        raw, count = raw[len(beat) :], count + 1
    return count, raw


async def test_a_slow_first_event_gets_keep_alive_comments_then_the_stream() -> None:
    scripted = Scripted(delay=BEAT * 4)
    response, raw = await post(scripted, "/v1/chat/completions", BODY)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    beats, rest = beats_then(raw, b": keep-alive\n\n")
    assert beats >= 2
    chunks = sse(rest)
    assert chunks[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "Hello"
    assert scripted.closed


async def test_a_refusal_after_keep_alives_is_an_error_event() -> None:
    refused = ResourceExhausted("rate limited", reason="RATE_LIMITED", retry_after_seconds=3)
    scripted = Scripted(failure=refused, fail_after=0, delay=BEAT * 3)
    response, raw = await post(scripted, "/v1/chat/completions", BODY)
    assert response.status == 200  # committed by the beats
    beats, rest = beats_then(raw, b": keep-alive\n\n")
    assert beats >= 1
    (error,) = sse(rest)  # no [DONE]
    assert error["error"]["code"] == "rate_limited"


async def test_a_quick_refusal_keeps_its_status() -> None:
    refused = ResourceExhausted("rate limited", reason="RATE_LIMITED", retry_after_seconds=3)
    response, raw = await post(
        Scripted(failure=refused, fail_after=0), "/v1/chat/completions", BODY
    )
    assert response.status == 429
    assert not raw.startswith(b":")


async def test_anthropic_streams_ping_while_waiting_then_the_message() -> None:
    response, raw = await post(Scripted(delay=BEAT * 4), "/v1/messages", ANTHROPIC_BODY)
    assert response.status == 200
    beats, rest = beats_then(raw, b'event: ping\ndata: {"type": "ping"}\n\n')
    assert beats >= 2
    names = [block.split(b"\n")[0] for block in rest.split(b"\n\n") if block]
    assert names[0] == b"event: message_start"
    assert names[-1] == b"event: message_stop"


async def test_anthropic_refusal_after_pings_is_an_error_event() -> None:
    refused = ResourceExhausted("rate limited", reason="RATE_LIMITED", retry_after_seconds=3)
    scripted = Scripted(failure=refused, fail_after=0, delay=BEAT * 3)
    response, raw = await post(scripted, "/v1/messages", ANTHROPIC_BODY)
    assert response.status == 200
    beats, rest = beats_then(raw, b'event: ping\ndata: {"type": "ping"}\n\n')
    assert beats >= 1
    name, data = rest.strip().split(b"\n")
    assert name == b"event: error"
    assert orjson.loads(data.removeprefix(b"data: "))["error"]["type"] == "rate_limit_error"
