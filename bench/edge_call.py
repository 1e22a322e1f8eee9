"""One streamed completion through the router's OpenAI-compatible HTTP edge, for ``make bench``
(:mod:`bench.relay`): the same demo completion as its gRPC rows, read as server-sent
``chat.completion.chunk`` events, with the usage chunk at the end (``include_usage``), checked
word for word (``expected``) and for its completion token count (one token per word)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from switchboard_devstack.stack import Stack


def edge_session(stack: Stack) -> tuple[aiohttp.ClientSession, str]:
    """A client session for the stack's edge (trusting its development CA when it has TLS)
    and the edge's chat completions URL."""
    port = stack.ports.router_http
    if stack.plaintext:
        connector = aiohttp.TCPConnector(limit=0)
        return aiohttp.ClientSession(
            connector=connector
        ), f"http://127.0.0.1:{port}/v1/chat/completions"
    context = ssl.create_default_context(cafile=str(stack.pki.ca))
    connector = aiohttp.TCPConnector(limit=0, ssl=context)
    return aiohttp.ClientSession(
        connector=connector
    ), f"https://127.0.0.1:{port}/v1/chat/completions"


def edge_call(
    session: aiohttp.ClientSession, url: str, key: str, prompt: str, expected: str
) -> Callable[[], Awaitable[float]]:
    body = orjson.dumps(
        {
            "model": "switchboard/demo",
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    tokens = len(expected.split())

    async def one() -> float:
        start = time.perf_counter()
        ttft = 0.0
        text: list[str] = []
        completion_tokens = 0
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = orjson.loads(line[6:])
                for choice in chunk["choices"]:
                    piece = choice["delta"].get("content")
                    if piece:
                        text.append(piece)
                        if not ttft:
                            ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    completion_tokens = chunk["usage"]["completion_tokens"]
        if "".join(text) != expected or completion_tokens != tokens:
            raise RuntimeError("short stream")
        return ttft

    return one
