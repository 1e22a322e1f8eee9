"""The OpenAI adapter over real HTTP: against the demo upstream and scripted error servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp import web

from switchboard_core.config import Secret
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_demo.upstream import DemoSettings, reply_words, start
from switchboard_router.canonical import (
    AdapterEvent,
    CompletionRequest,
    Finish,
    FinishEvent,
    Message,
    Role,
    TextDelta,
    UsageReport,
)
from switchboard_router.providers.base import (
    Target,
    UpstreamContextLengthExceeded,
    UpstreamCredentialRejected,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from switchboard_router.providers.http import create_session
from switchboard_router.providers.openai_chat import OpenAIChatAdapter
from tests.fakes.scripted_http import scripted_server, sse_body

REQUEST = CompletionRequest(
    model="switchboard/demo",
    messages=(Message.of(Role.SYSTEM, "be brief"), Message.of(Role.USER, "say something nice")),
)


@pytest.fixture
async def demo_url() -> AsyncIterator[str]:
    runner, port = await start("127.0.0.1", 0, DemoSettings(reply_tokens=20))
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.fixture
async def adapter() -> AsyncIterator[OpenAIChatAdapter]:
    session = create_session(UpstreamPolicy(["127.0.0.1"]))  # local servers only
    yield OpenAIChatAdapter(session)
    await session.close()


def target(url: str, model: str = "demo") -> Target:
    return Target("demo", url, model, Secret("sk-upstream"))


async def run(
    adapter: OpenAIChatAdapter, url: str, request: CompletionRequest = REQUEST
) -> list[AdapterEvent]:
    return [e async for e in adapter.stream(request, target(url), timeout=10)]


async def test_streams_text_usage_and_finish_from_the_demo(
    adapter: OpenAIChatAdapter, demo_url: str
) -> None:
    events = await run(adapter, demo_url)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == " ".join(reply_words(20))
    assert [e for e in events if isinstance(e, FinishEvent)] == [FinishEvent(Finish.STOP, "stop")]
    usage = [e for e in events if isinstance(e, UsageReport)]
    # prompt: 2 + 3 words plus 3 per message; completion: 20 words
    assert usage == [UsageReport(prompt_tokens=11, completion_tokens=20)]


async def test_max_tokens_cuts_with_length(adapter: OpenAIChatAdapter, demo_url: str) -> None:
    request = CompletionRequest(model="x/y", messages=REQUEST.messages, max_tokens=5)
    events = await run(adapter, demo_url, request)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == " ".join(reply_words(5))
    assert FinishEvent(Finish.LENGTH, "length") in events


async def test_the_demo_speaks_the_real_format_for_the_official_sdk(demo_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=demo_url, api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(texts) == " ".join(reply_words(20))
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 20 and usage.prompt_tokens == 5
    whole = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert whole.choices[0].message.content == " ".join(reply_words(3))
    assert whole.choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    await client.close()


async def test_request_body_is_the_openai_wire_format(adapter: OpenAIChatAdapter) -> None:
    async def ok(_request: web.Request) -> web.Response:
        body = sse_body(
            json.dumps(
                {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
            ),
            json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
            "[DONE]",
        )
        return web.Response(body=body, content_type="text/event-stream")

    request = CompletionRequest(
        model="x/y", messages=REQUEST.messages, max_tokens=9, temperature=0.0, stop=("END",), seed=4
    )
    async with scripted_server(ok) as server:
        await run(adapter, server.url, request)
    sent = server.requests[0]
    assert sent["model"] == "demo"
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say something nice"},
    ]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["seed"]) == (
        9,
        0.0,
        ["END"],
        4,
    )
    assert "top_p" not in sent


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (
            429,
            {"error": {"message": "Rate limit reached", "type": "requests"}},
            UpstreamRateLimited,
        ),
        (
            401,
            {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}},
            UpstreamCredentialRejected,
        ),
        (404, {"error": {"message": "no such model", "code": "model_not_found"}}, UpstreamNotFound),
        (500, {"error": {"message": "The server had an error"}}, UpstreamUnavailable),
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens",
                    "code": "context_length_exceeded",
                }
            },
            UpstreamContextLengthExceeded,
        ),
    ],
)
async def test_http_errors_map_through_the_table(
    adapter: OpenAIChatAdapter,
    status: int,
    body: dict[str, object],
    error_type: type[UpstreamError],
) -> None:
    async def fail(_request: web.Request) -> web.Response:
        return web.json_response(body, status=status, headers={"retry-after": "7"})

    async with scripted_server(fail) as server:
        with pytest.raises(error_type) as caught:
            await run(adapter, server.url)
    assert caught.value.status == status
    if status == 429:
        assert caught.value.retry_after_seconds == 7.0


async def test_a_stream_cut_before_the_finish_is_an_error(adapter: OpenAIChatAdapter) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            sse_body(json.dumps({"choices": [{"index": 0, "delta": {"content": "par"}}]}))
        )
        await response.write(b": keep-alive\n\n")
        return response  # ends without finish_reason or [DONE]

    async with scripted_server(cut) as server:
        events: list[AdapterEvent] = []
        with pytest.raises(UpstreamUnavailable):
            async for event in OpenAIChatAdapter.stream(
                adapter, REQUEST, target(server.url), timeout=5
            ):
                events.append(event)
    assert events == [TextDelta("par")]


async def test_an_error_chunk_midway_is_an_error(adapter: OpenAIChatAdapter) -> None:
    async def midway(_request: web.Request) -> web.Response:
        body = sse_body(
            json.dumps({"choices": [{"index": 0, "delta": {"content": "a"}}]}),
            json.dumps({"error": {"message": "overloaded", "type": "server_error"}}),
        )
        return web.Response(body=body, content_type="text/event-stream")

    async with scripted_server(midway) as server:
        events: list[AdapterEvent] = []
        with pytest.raises(UpstreamUnavailable, match="overloaded"):
            async for event in adapter.stream(REQUEST, target(server.url), timeout=5):
                events.append(event)
    # the text before the error arrived in the same read, and is still relayed (and metered)
    assert events == [TextDelta("a")]


async def test_chunks_that_arrive_together_are_relayed_as_one_delta(
    adapter: OpenAIChatAdapter,
) -> None:
    words = ["one", " two", " three"]

    async def burst(_request: web.Request) -> web.Response:
        chunks = [
            json.dumps({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
            for w in words
        ]
        chunks.append(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        usage = {"prompt_tokens": 4, "completion_tokens": 3}
        chunks.append(json.dumps({"choices": [], "usage": usage}))
        return web.Response(body=sse_body(*chunks, "[DONE]"), content_type="text/event-stream")

    async with scripted_server(burst) as server:
        events = await run(adapter, server.url)
    assert events == [
        TextDelta("one two three"),
        FinishEvent(Finish.STOP, "stop"),
        UsageReport(prompt_tokens=4, completion_tokens=3),
    ]


async def test_chunks_that_arrive_apart_are_relayed_apart(adapter: OpenAIChatAdapter) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("slow", " words"):
            delta = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await response.write(sse_body(json.dumps(delta)))
            await asyncio.sleep(0.05)
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(sse_body(json.dumps(done), "[DONE]"))
        return response

    async with scripted_server(trickle) as server:
        events = await run(adapter, server.url)
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta("slow"),
        TextDelta(" words"),
    ]


async def test_unreachable_upstream_is_unavailable(adapter: OpenAIChatAdapter) -> None:
    from switchboard_devstack.storage import free_port

    with pytest.raises(UpstreamUnavailable, match="could not reach"):
        await run(adapter, f"http://127.0.0.1:{free_port()}/v1")


async def test_closing_the_stream_early_closes_the_upstream_connection(
    adapter: OpenAIChatAdapter,
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(1000):
            chunk = {"choices": [{"index": 0, "delta": {"content": "tok"}}]}
            await response.write(sse_body(json.dumps(chunk)))
            await asyncio.sleep(0.01)
        return response

    async with scripted_server(slow) as server:
        stream = adapter.stream(REQUEST, target(server.url), timeout=30)
        assert await anext(stream) == TextDelta("tok")
        await stream.aclose()  # type: ignore[attr-defined]  # as the relay does on cancel
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(server.disconnected.wait(), timeout=2)
        assert loop.time() - start < 1.0


async def test_timeout_is_enforced(adapter: OpenAIChatAdapter) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return web.Response(status=200)

    from switchboard_router.providers.base import UpstreamTimeout

    async with scripted_server(stall) as server:
        with pytest.raises(UpstreamTimeout):
            async for _ in adapter.stream(REQUEST, target(server.url), timeout=0.3):
                pass
