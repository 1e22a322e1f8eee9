"""``make bench-http``: which HTTP client the router should stream provider responses with.

A separate process serves OpenAI-style SSE completions (N chunks, back to back, keep-alive);
this process reads them through each candidate client with a pooled, keep-alive connection
set, exactly as an adapter would (POST a JSON body, read the body as it arrives), and prints
completions per second, client CPU milliseconds per completion (``time.process_time``), and
time-to-first-byte and whole-stream p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import orjson
from aiohttp import web

from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.providers.http import create_session

Reader = Callable[[], Awaitable[tuple[float, float]]]
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})


def serve(port: int, chunks: int) -> None:
    """The upstream, in its own process so its CPU is not counted."""
    piece = orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "token "}}],
        }
    )
    event = b"data: " + piece + b"\n\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(event)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def aiohttp_reader(url: str) -> AsyncIterator[Reader]:
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as session:  # a local server

        async def one() -> tuple[float, float]:
            start = time.perf_counter()
            first = 0.0
            async with session.post(
                url, data=BODY, headers={"Content-Type": "application/json"}
            ) as r:
                async for _ in r.content.iter_any():
                    first = first or time.perf_counter() - start
            return first, time.perf_counter() - start

        yield one


@asynccontextmanager
async def httpx_reader(url: str) -> AsyncIterator[Reader]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:

        async def one() -> tuple[float, float]:
            start = time.perf_counter()
            first = 0.0
            async with client.stream(
                "POST", url, content=BODY, headers={"Content-Type": "application/json"}
            ) as r:
                async for _ in r.aiter_raw():
                    first = first or time.perf_counter() - start
            return first, time.perf_counter() - start

        yield one


CLIENTS = {"aiohttp": aiohttp_reader, "httpx": httpx_reader}


async def drive(
    one: Reader, total: int, concurrency: int
) -> tuple[list[float], list[float], float, float]:
    firsts: list[float] = []
    wholes: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            first, whole = await one()
            firsts.append(first)
            wholes.append(whole)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return firsts, wholes, time.perf_counter() - wall, time.process_time() - cpu


def pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else values[0] * 1000
    )


async def run(chunk_counts: list[int], levels: list[int], total: int) -> None:
    print(
        "| client | chunks | conc | compl/s | CPU ms/compl | TTFB p50 ms | TTFB p99 ms"
        " | stream p50 ms | stream p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for chunks in chunk_counts:
        port = free_port()
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(port, chunks), daemon=True
        )
        server.start()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                        break
                except OSError:
                    await asyncio.sleep(0.05)
            for level in levels:
                for name, make in CLIENTS.items():
                    async with make(url) as one:
                        await drive(one, 50, min(level, 8))  # warm the pool
                        firsts, wholes, wall, cpu = await drive(one, total, level)
                    rate, cpu_ms = len(wholes) / wall, cpu * 1000 / len(wholes)
                    latencies = [pct(firsts, 50), pct(firsts, 99), pct(wholes, 50), pct(wholes, 99)]
                    cells = " | ".join(f"{v:.2f}" for v in latencies)
                    print(f"| {name} | {chunks} | {level} | {rate:.0f} | {cpu_ms:.3f} | {cells} |")
        finally:
            server.terminate()
            server.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--chunks", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--requests", type=int, default=1000, help="completions per row")
    args = parser.parse_args()
    asyncio.run(run(args.chunks, args.concurrency, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
