"""The fakes' injected faults over real HTTP: what a client of the fake actually sees.

Each fault as a provider's client meets it: 5xx and 429 answers in the provider's own error
format (with ``Retry-After``), a connection reset, a request accepted and never answered, a
stream that goes silent after N chunks, a slow first token after prompt headers, and chunks
spaced as asked. Faults switch at run time and leave the model list alone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.faults import FaultInjector, Faults
from tests.fakes.script import FakeProvider, Script

TEXT = tuple(f"w{i} " for i in range(8))
BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
HEADERS = {"Authorization": "Bearer test"}


@asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per request: a fault on one must not poison the next.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def post(client: aiohttp.ClientSession, fake: FakeProvider) -> int:
    async with client.post(fake.base_url + "/chat/completions", json=BODY, headers=HEADERS) as r:
        await r.read()
        return r.status


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, Any]]:
    """(arrival time, parsed data) of each SSE event."""
    async for line in response.content:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            yield time.monotonic(), data.decode() if data == b"[DONE]" else orjson.loads(data)


async def test_seeded_errors_come_in_the_drawn_order_with_the_provider_s_error_body() -> None:
    faults = Faults(seed=11, error_rate=0.3, error_status=503)
    expected = FaultInjector()
    expected.reset(faults)
    want = [503 if expected.draw().outcome == "error" else 200 for _ in range(40)]
    async with openai_server.serve(Script(), faults=faults) as fake, session() as client:
        got = [await post(client, fake) for _ in range(40)]
        async with client.post(fake.base_url + "/chat/completions", json={}, headers=HEADERS):
            pass
        assert fake.faults.outcomes["error"] == want.count(503)
    assert got == want
    assert 6 <= got.count(503) <= 18  # about 30% of 40


async def test_a_429_fault_says_when_to_retry_in_openai_s_format() -> None:
    faults = Faults(burst=2, error_status=429, retry_after="2")
    async with openai_server.serve(Script(), faults=faults) as fake, session() as client:
        for _ in range(2):
            async with client.post(
                fake.base_url + "/chat/completions", json=BODY, headers=HEADERS
            ) as response:
                assert response.status == 429
                assert response.headers["retry-after"] == "2"
                error = (await response.json())["error"]
                assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert await post(client, fake) == 200  # the burst is over


@pytest.mark.parametrize(
    ("serve", "path", "marker"),
    [
        (anthropic_server.serve, "/messages", b'"overloaded_error"'),
        (gemini_server.serve, "/models/m:streamGenerateContent?alt=sse", b'"UNAVAILABLE"'),
    ],
)
async def test_other_fakes_render_an_injected_error_in_their_own_format(
    serve: Any, path: str, marker: bytes
) -> None:
    status = 529 if b"overloaded" in marker else 503
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", "x-goog-api-key": "k"}
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        serve(Script(), faults=Faults(burst=1, error_status=status)) as fake,
        session() as client,
        client.post(fake.base_url + path, json=body, headers=headers) as response,
    ):
        assert response.status == status
        assert marker in await response.read()


async def test_a_reset_fault_drops_the_connection_before_any_byte() -> None:
    async with openai_server.serve(Script(), faults=Faults(reset_rate=1.0)) as fake:
        async with session() as client:
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(client, fake)
        assert len(fake.requests) == 1  # it was received (and counted) first


async def test_a_hang_fault_never_answers_until_the_client_leaves() -> None:
    async with openai_server.serve(Script(), faults=Faults(hang_rate=1.0)) as fake:
        async with session() as client:
            timeout = aiohttp.ClientTimeout(total=0.3)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with client.post(
                    fake.base_url + "/chat/completions", json=BODY, headers=HEADERS, timeout=timeout
                ) as response:
                    await response.read()
            assert time.monotonic() - started >= 0.3
        await asyncio.wait_for(fake.disconnected.wait(), 2)


async def test_a_stall_fault_goes_silent_after_n_chunks_with_the_connection_open() -> None:
    faults = Faults(stall_rate=1.0, stall_after=3)
    async with openai_server.serve(Script(text=TEXT), faults=faults) as fake, session() as client:
        async with client.post(
            fake.base_url + "/chat/completions", json=BODY, headers=HEADERS
        ) as response:
            assert response.status == 200
            seen: list[Any] = []

            async def read() -> None:
                async for _, data in events(response):
                    seen.append(data)

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(read(), 0.4)
        contents = [d["choices"][0]["delta"].get("content") for d in seen]
        assert contents == ["", "w0 ", "w1 ", "w2 "]  # the role chunk, then three
        await asyncio.wait_for(fake.disconnected.wait(), 2)


async def test_a_slow_first_token_comes_after_prompt_headers_then_chunks_are_spaced() -> None:
    faults = Faults(first_token_delay=0.4, chunk_gap=0.03)
    async with openai_server.serve(Script(text=TEXT), faults=faults) as fake, session() as client:
        started = time.monotonic()
        async with client.post(
            fake.base_url + "/chat/completions", json=BODY, headers=HEADERS
        ) as response:
            headers_at = time.monotonic()
            arrivals = [(at, data) async for at, data in events(response)]
    assert headers_at - started < 0.2  # headers at once, as providers send them
    first_at = arrivals[0][0]
    assert 0.4 <= first_at - started < 0.8
    assert arrivals[-1][1] == "[DONE]"
    content = [
        at
        for at, d in arrivals
        if d != "[DONE]" and d["choices"] and d["choices"][0]["delta"].get("content")
    ]
    gaps = [b - a for a, b in itertools.pairwise(content)]
    assert len(gaps) == len(TEXT) - 1
    assert all(gap >= 0.025 for gap in gaps)
    assert sum(gaps) / len(gaps) < 0.1
    assert fake.faults.outcomes == {"ok": 1}


async def test_faults_switch_at_run_time_and_spare_the_model_list() -> None:
    async with openai_server.serve(Script()) as fake, session() as client:
        assert await post(client, fake) == 200
        fake.inject(Faults(error_rate=1.0, error_status=502))
        assert await post(client, fake) == 502
        async with client.get(fake.base_url + "/models", headers=HEADERS) as listing:
            assert listing.status == 200
        fake.inject(Faults())
        assert await post(client, fake) == 200
        assert fake.faults.outcomes == {"ok": 1}
