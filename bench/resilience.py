"""``make bench-resilience``: what live routing and hedging buy when upstreams misbehave.

Starts the real processes (catalog, metering, router; demo upstream unused) on free ports
against Postgres and Redis (DATABASE_URL/REDIS_URL, else the local ones, else embedded), and
three in-process OpenAI-compatible fakes (tests/fakes, with injected faults) serving one model:

- ``flaky``, the cheapest: answers 30% of requests with a 503 at once (a seeded draw);
- ``slow``, next in price: its first token comes after 2 s;
- ``healthy``, the dearest: first token after about 200 ms.

All three then stream 20 chunks about 15 ms apart, with 30% jitter, as a provider generating
some 65 tokens per second does. The same streamed completions then go through the router four
ways, interleaved in rounds so each meets the same live figures: (a) ``provider.sort = PRICE``
(a static order: flaky first, then slow), (b) the default live routing (stable endpoints
weighted by price: it drops flaky, not slow), (c) ``provider.sort = LATENCY`` on the live
figures, (d) live routing with hedging (``provider.hedge``: a fixed delay, or the live TTFT
percentile with ``--hedge live``).
For each it prints the share of requests that completed, time to first token p50/p99 (client
side, completed requests), upstream requests per completion (counted at the fakes) and which
upstream served; the baseline, measured in the same run, is the healthy upstream called
directly over HTTP/SSE. Router settings are the defaults unless ``--env NAME=VALUE`` says
otherwise (breakers, retry budget). Failed requests are the subject here, not a bench error: it
fails only if the direct baseline fails or a path completes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
import grpc

from bench.stacks import bench_stack
from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.fakes import openai_server
from tests.fakes.faults import Faults
from tests.fakes.script import FakeProvider, Script, ScriptUsage

FLAKY, SLOW, HEALTHY = "flaky", "slow", "healthy"
UPSTREAMS = (FLAKY, SLOW, HEALTHY)  # in price order
PRICES = {FLAKY: "1", SLOW: "2", HEALTHY: "3"}  # USD per million tokens, prompt and completion
SCRIPT = Script(text=tuple(f"w{i} " for i in range(20)), usage=ScriptUsage(12, 20))
PROMPT = "Write twenty words about gateways."
Call = Callable[[], Awaitable[str]]  # one completion; returns who served it, raises on failure


@dataclass
class Tally:
    """One path's results over all its rounds."""

    name: str
    ttft: list[float] = field(default_factory=list)
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    upstream: Counter[str] = field(default_factory=Counter)  # requests seen by each fake

    def row(self) -> str:
        done = len(self.ttft)
        ms = sorted(t * 1000 for t in self.ttft) or [0.0]
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        per = sum(self.upstream.values()) / done if done else float("nan")
        split = "/".join(str(self.served[u]) for u in UPSTREAMS)
        failed = ", ".join(f"{n} {code}" for code, n in self.failures.most_common()) or "-"
        return (
            f"| {self.name} | {self.requests} | {100 * done / max(1, self.requests):.1f}% "
            f"| {q[49]:.0f} | {q[98]:.0f} | {per:.2f} | {split} | {failed} |"
        )


HEADER = (
    "| path | requests | completed | ttft p50 ms | ttft p99 ms | upstream requests"
    " / completion | served by flaky/slow/healthy | failures |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def faults(args: argparse.Namespace) -> dict[str, Faults]:
    pace = {"chunk_gap": args.chunk_gap, "jitter": 0.3}
    return {
        FLAKY: Faults(
            seed=args.seed,
            error_rate=args.failure_rate,
            error_status=503,
            first_token_delay=args.ttft,
            **pace,
        ),
        SLOW: Faults(seed=args.seed + 1, first_token_delay=args.slow_ttft, **pace),
        HEALTHY: Faults(seed=args.seed + 2, first_token_delay=args.ttft, **pace),
    }


async def publish(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub, model: str, fakes: dict[str, FakeProvider]
) -> None:
    """The model and its three endpoints, through the catalog's admin API."""
    entry = catalog_pb2.Model(
        id=model, display_name="Resilience bench", context_length=8192,
        input_modalities=["text"], output_modalities=["text"],
    )  # fmt: skip
    await catalog.UpsertModel(catalog_pb2.UpsertModelRequest(model=entry))
    for upstream, fake in fakes.items():
        provider = catalog_pb2.Provider(
            id=upstream, display_name=upstream, base_url=fake.base_url, dialect="openai",
            api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
        )  # fmt: skip
        await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
        price = PRICES[upstream]
        endpoint = catalog_pb2.Endpoint(
            model_id=model, provider_id=upstream, upstream_model="m", context_length=8192,
            pricing=common_pb2.Pricing(prompt_usd_per_mtok=price, completion_usd_per_mtok=price),
            status=catalog_pb2.ENDPOINT_STATUS_ACTIVE,
        )  # fmt: skip
        await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))


def routed(
    stub: router_pb2_grpc.RouterServiceAsyncStub,
    key: str,
    model: str,
    tally: Tally,
    provider: router_pb2.ProviderPreferences,
) -> Call:
    request = router_pb2.StreamCompletionRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)],
        provider=provider,
    )
    metadata = (("authorization", f"Bearer {key}"),)

    async def one() -> str:
        started = time.perf_counter()
        ttft, served, ended = 0.0, "", False
        async for message in stub.StreamCompletion(request, metadata=metadata):
            kind = message.WhichOneof("event")
            if kind == "start":
                served = message.start.provider
            elif kind == "delta" and not ttft:
                ttft = time.perf_counter() - started
            elif kind == "end":
                ended = True
        if not ended or not ttft:
            raise RuntimeError("short stream")
        tally.ttft.append(ttft)
        return served

    return one


def direct(session: aiohttp.ClientSession, fake: FakeProvider, tally: Tally) -> Call:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": "Bearer bench"}

    async def one() -> str:
        started = time.perf_counter()
        ttft = 0.0
        async with session.post(
            fake.base_url + "/chat/completions", json=body, headers=headers
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if not ttft and line.startswith(b"data: {") and b'"content":"w' in line:
                    ttft = time.perf_counter() - started
        if not ttft:
            raise RuntimeError("short stream")
        tally.ttft.append(ttft)
        return HEALTHY

    return one


async def batch(
    call: Call, tally: Tally, total: int, concurrency: int, fakes: dict[str, FakeProvider]
) -> None:
    """``total`` calls, ``concurrency`` at a time; counts what each fake saw meanwhile."""
    before = {u: len(f.requests) for u, f in fakes.items()}
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            tally.requests += 1
            try:
                tally.served[await call()] += 1
            except grpc.aio.AioRpcError as error:
                tally.failures[error.code().name] += 1
            except (aiohttp.ClientError, RuntimeError) as error:
                tally.failures[type(error).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for upstream, fake in fakes.items():
        tally.upstream[upstream] += len(fake.requests) - before[upstream]


def running_stack(args: argparse.Namespace) -> AbstractAsyncContextManager[Stack]:
    """The processes, on a fresh database, with the three upstreams' keys and hosts."""
    overrides = dict(item.split("=", 1) for item in args.env)
    return bench_stack(
        "sbresilience",
        {
            **{f"SWITCHBOARD_PROVIDER_KEY_{u.upper()}": "sk-bench" for u in UPSTREAMS},
            **{f"SWITCHBOARD_PROVIDER_HOSTS_{u.upper()}": "127.0.0.1" for u in UPSTREAMS},
            **overrides,
        },
    )


async def until_routed(stub: router_pb2_grpc.RouterServiceAsyncStub, key: str, model: str) -> None:
    metadata = (("authorization", f"Bearer {key}"),)
    for _ in range(200):
        reply = await stub.ListModels(
            account_pb2.ListModelsRequest(page_size=500, provider_id=SLOW), metadata=metadata
        )
        if any(m.id == model and len(m.endpoints) == 3 for m in reply.models):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the router never saw the bench model")


def hedging(args: argparse.Namespace) -> tuple[str, common_pb2.Hedging]:
    if args.hedge == "live":
        policy = common_pb2.Hedging(
            mode=common_pb2.Hedging.MODE_LIVE_TTFT,
            delay_ms=args.hedge_delay_ms,
            ttft_percentile=args.hedge_percentile,
        )
        return f"live + hedging (TTFT p{args.hedge_percentile})", policy
    policy = common_pb2.Hedging(
        mode=common_pb2.Hedging.MODE_FIXED_DELAY, delay_ms=args.hedge_delay_ms
    )
    return f"live + hedging ({args.hedge_delay_ms} ms)", policy


@dataclass
class Rig:
    """What the load runs against: the router, a key, the fakes, an HTTP session."""

    stub: router_pb2_grpc.RouterServiceAsyncStub
    key: str
    model: str
    fakes: dict[str, FakeProvider]
    session: aiohttp.ClientSession


async def rig_up(exits: AsyncExitStack, args: argparse.Namespace) -> Rig:
    """The fakes, the stack, the model published and routed, a key; torn down by ``exits``."""
    model = f"bench/resilience-{uuid.uuid4().hex[:8]}"  # fresh live figures every run
    plan = faults(args)
    fakes = {
        u: await exits.enter_async_context(openai_server.serve(SCRIPT, faults=plan[u]))
        for u in UPSTREAMS
    }
    stack = await exits.enter_async_context(running_stack(args))
    catalog_channel = await exits.enter_async_context(stack.channel("catalog"))
    metering_channel = await exits.enter_async_context(stack.channel("metering"))
    router_channel = await exits.enter_async_context(stack.channel("router", bearer=""))
    session = await exits.enter_async_context(
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    )
    await publish(catalog_pb2_grpc.CatalogServiceStub(catalog_channel), model, fakes)
    metering = metering_pb2_grpc.MeteringServiceStub(metering_channel)
    request = metering_pb2.CreateApiKeyRequest(account_id="bench", name="resilience")
    key = (await metering.CreateApiKey(request)).secret
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    await until_routed(stub, key, model)
    return Rig(stub, key, model, fakes, session)


async def measure(rig: Rig, args: argparse.Namespace) -> list[Tally]:
    """Warm up on each upstream alone, then every path in interleaved rounds."""
    off = common_pb2.Hedging(mode=common_pb2.Hedging.MODE_OFF)
    for upstream in UPSTREAMS:  # connections, and some live figures for each endpoint
        warm = Tally("warm-up")
        only = router_pb2.ProviderPreferences(only=[upstream], hedge=off)
        await batch(routed(rig.stub, rig.key, rig.model, warm, only), warm, 10, 5, rig.fakes)
    hedged_name, hedge = hedging(args)
    tallies = [
        Tally("direct to healthy"),
        Tally("static price order"),
        Tally("live routing"),
        Tally("live, sort=latency"),
        Tally(hedged_name),
    ]
    preferences = [
        router_pb2.ProviderPreferences(sort=router_pb2.PROVIDER_SORT_PRICE, hedge=off),
        router_pb2.ProviderPreferences(hedge=off),
        router_pb2.ProviderPreferences(sort=router_pb2.PROVIDER_SORT_LATENCY, hedge=off),
        router_pb2.ProviderPreferences(hedge=hedge),
    ]
    calls: list[Call] = [direct(rig.session, rig.fakes[HEALTHY], tallies[0])]
    calls += [
        routed(rig.stub, rig.key, rig.model, tally, preference)
        for tally, preference in zip(tallies[1:], preferences, strict=True)
    ]
    each = max(1, args.requests // args.rounds)
    for _ in range(args.rounds):
        for call, tally in zip(calls, tallies, strict=True):
            await batch(call, tally, each, args.concurrency, rig.fakes)
    return tallies


async def run(args: argparse.Namespace) -> int:
    async with AsyncExitStack() as exits:
        rig = await rig_up(exits, args)
        each = max(1, args.requests // args.rounds)
        print(
            f"\n{each * args.rounds} streamed completions per path in {args.rounds} interleaved"
            f" rounds, concurrency {args.concurrency}; flaky fails {args.failure_rate:.0%}"
            f" (503), slow's first token after {args.slow_ttft:g} s, healthy's after"
            f" ~{args.ttft * 1000:.0f} ms; 20 chunks ~{args.chunk_gap * 1000:.0f} ms apart\n",
            flush=True,
        )
        started = time.monotonic()
        tallies = await measure(rig, args)
        print(HEADER)
        for tally in tallies:
            print(tally.row())
        print(f"\n({time.monotonic() - started:.0f} s of load, warm-up included)")
    broken = tallies[0].failures or any(not t.ttft for t in tallies)
    return 1 if broken else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=240, help="completions per path")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--failure-rate", type=float, default=0.3, help="flaky's 503 share")
    parser.add_argument("--slow-ttft", type=float, default=2.0, help="slow's seconds to 1st token")
    parser.add_argument("--ttft", type=float, default=0.2, help="the others' seconds to 1st token")
    parser.add_argument("--chunk-gap", type=float, default=0.015, help="seconds between chunks")
    parser.add_argument("--hedge", choices=("fixed", "live"), default="fixed")
    parser.add_argument("--hedge-delay-ms", type=int, default=400)
    parser.add_argument("--hedge-percentile", type=int, default=90)
    parser.add_argument("--seed", type=int, default=1, help="the fakes' fault draws")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a service setting"
    )
    args = parser.parse_args()
    problems = [
        name
        for name, bad in (
            ("--requests", not 1 <= args.requests <= 100_000),
            ("--rounds", not 1 <= args.rounds <= args.requests),
            ("--concurrency", not 1 <= args.concurrency <= 1024),
            ("--failure-rate", not 0 <= args.failure_rate <= 1),
            ("--slow-ttft", not 0 <= args.slow_ttft <= 60),
            ("--ttft", not 0 <= args.ttft <= 60),
            ("--chunk-gap", not 0 <= args.chunk_gap <= 1),
            ("--hedge-delay-ms", not 10 <= args.hedge_delay_ms <= 60_000),
            ("--hedge-percentile", not 50 <= args.hedge_percentile <= 99),
            ("--env", any("=" not in item for item in args.env)),
        )
        if bad
    ]
    if problems:
        parser.error("out of range: " + ", ".join(problems))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
