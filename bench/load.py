"""The load side of ``make bench``: one streamed completion per call (straight at the upstream
over HTTP/SSE, or over gRPC through the router or the bare relay), the driver that runs them at a
concurrency, and a result row (TTFT p50/p99, completions/s, the serving process's CPU per
completion and metering's)."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import grpc
import psutil

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_demo.upstream import reply_words

PROMPT = "Write twenty words about gateways."
EXPECTED_TEXT = " ".join(reply_words(20))

Call = Callable[[], Awaitable[float]]


@dataclass
class Result:
    name: str
    concurrency: int
    ttft: list[float]
    seconds: float
    failures: int
    cpu_ms_per_completion: float | None = None
    metering_cpu_ms_per_completion: float | None = None

    def ttft_p50_ms(self) -> float:
        return statistics.median(self.ttft) * 1000 if self.ttft else 0.0

    def ttft_p99_ms(self) -> float:
        if len(self.ttft) < 2:
            return self.ttft_p50_ms()
        return statistics.quantiles(self.ttft, n=100)[98] * 1000

    def rate(self) -> float:
        return len(self.ttft) / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        cpu = f"{self.cpu_ms_per_completion:8.2f}" if self.cpu_ms_per_completion else "       -"
        meter = self.metering_cpu_ms_per_completion
        metering = f"{meter:8.2f}" if meter is not None else "       -"
        return (
            f"{self.name:<13}{self.concurrency:>5}{len(self.ttft):>8}{self.ttft_p50_ms():>10.2f}"
            f"{self.ttft_p99_ms():>10.2f}{self.rate():>12.1f}{cpu:>12}{metering:>12}"
            f"{self.failures:>8}"
        )


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile (``q`` from 0 to 1) of ``values``, in any order."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


HEADER = (
    f"{'path':<13}{'conc':>5}{'n':>8}{'ttft p50':>10}{'ttft p99':>10}{'compl/s':>12}"
    f"{'server cpu':>12}{'meter cpu':>12}{'failed':>8}\n{'':<13}{'':>5}{'':>8}{'ms':>10}"
    f"{'ms':>10}{'':>12}{'ms/compl':>12}{'ms/compl':>12}{'':>8}"
)


async def drive(call: Call, total: int, concurrency: int) -> tuple[list[float], float, int]:
    ttfts: list[float] = []
    failures = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                ttfts.append(await call())
            except (grpc.aio.AioRpcError, aiohttp.ClientError, RuntimeError):
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, time.perf_counter() - start, failures


def cpu_ms(process: psutil.Process) -> float:
    times = process.cpu_times()
    return (times.user + times.system) * 1000


async def measure(
    name: str,
    call: Call,
    level: int,
    total: int,
    process: psutil.Process,
    metering: psutil.Process | None = None,
) -> Result:
    """One row: ``call`` ``total`` times at ``level``, with ``process``'s CPU (and metering's:
    writing these completions' usage, which drains as they end) per completion."""
    before = cpu_ms(process)
    meter_before = cpu_ms(metering) if metering else 0.0
    ttft, seconds, failures = await drive(call, total, level)
    done = max(1, len(ttft))
    cpu = (cpu_ms(process) - before) / done
    meter = (cpu_ms(metering) - meter_before) / done if metering else None
    return Result(name, level, ttft, seconds, failures, cpu, meter)


def direct_call(session: aiohttp.ClientSession, url: str, chunks: int = 20) -> Call:
    body = json.dumps(
        {
            "model": "demo",
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    headers = {"Content-Type": "application/json"}

    async def one() -> float:
        start = time.perf_counter()
        ttft = 0.0
        seen = 0
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content"' in line:
                    seen += 1
                    if not ttft and b'"content": ""' not in line:
                        ttft = time.perf_counter() - start
        if seen < chunks:
            raise RuntimeError("short stream")
        return ttft

    return one


def router_call(
    stub: router_pb2_grpc.RouterServiceAsyncStub,
    key: str,
    chunks: int = 20,
    deltas: list[int] | None = None,
) -> Call:
    """A gRPC ``StreamCompletion`` (the router's or the bare relay's) that checks every word
    and the usage arrived; appends each completion's count of delta messages to ``deltas``
    when given (chunks that arrived together may go out as one)."""
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)],
    )
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    expected = " ".join(reply_words(chunks))

    async def one() -> float:
        start = time.perf_counter()
        ttft = 0.0
        text: list[str] = []
        ended = False
        async for message in stub.StreamCompletion(request, metadata=metadata):
            kind = message.WhichOneof("event")
            if kind == "delta":
                text.append(message.delta.text)
                if not ttft:
                    ttft = time.perf_counter() - start
            elif kind == "end":
                ended = message.end.usage.completion_tokens == chunks
        if "".join(text) != expected or not ended:
            raise RuntimeError("short stream")
        if deltas is not None:
            deltas.append(len(text))
        return ttft

    return one
