"""``make bench``: what tracing costs the router, off versus on at a 1% and a 100% sample.

Starts three stacks of the real processes (demo upstream, catalog, metering, router; mutual
TLS, as deployed) on free ports against Postgres and Redis (DATABASE_URL/REDIS_URL, else the
local ones, else embedded): one with tracing off (no OTLP endpoint), one sampling 1% of
requests (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``OTEL_TRACES_SAMPLER_ARG=0.01``)
and one sampling all of them, each exporting to an OTLP/HTTP sink in this process that counts
the spans it is sent. For each concurrency it runs the same 20-chunk streaming completions as
bench/relay.py through each router, in alternating order over ``--rounds`` rounds (so drift
in the machine's load falls on every variant alike), and prints TTFT p50/p99, completions per
second and the router's (and metering's) CPU milliseconds per completion, then each traced
variant against the untraced one. Before that, in process: the hot-path helpers' cost per
completion with tracing off and on (microseconds). It fails if requests fail, if the traced
stacks exported no spans, or if the untraced one exported any.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import sampling as samplers
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.relay import HEADER, Deployment, Result, measured
from bench.stacks import new_stack
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard_core import rpc_tracing, tracing
from switchboard_devstack.storage import drop_database, find_postgres, find_redis

# Variant name -> its tracing settings (none: off).
VARIANTS: dict[str, dict[str, str]] = {
    "trace off": {},
    "trace 1%": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    },
    "trace 100%": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}


@dataclass
class Sink:
    """An OTLP/HTTP traces endpoint that counts the spans it is sent, per variant (each
    variant's stack exports to a path of its own)."""

    spans: dict[str, int] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        async def export(request: web.Request) -> web.Response:
            body = ExportTraceServiceRequest.FromString(await request.read())
            count = sum(
                len(scope.spans)
                for resource in body.resource_spans
                for scope in resource.scope_spans
            )
            variant = request.path.split("/")[1]
            self.spans[variant] = self.spans.get(variant, 0) + count
            response = ExportTraceServiceResponse().SerializeToString()
            return web.Response(body=response, content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 * 1024 * 1024)
        for variant in VARIANTS:
            app.router.add_post(f"/{_slug(variant)}/v1/traces", export)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _slug(variant: str) -> str:
    return variant.replace(" ", "-").replace("%", "pc")


async def deploy(
    variant: str, admin: str, redis: str, state: Path, token_delay: float, sink: Sink
) -> Deployment:
    env = {"SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": str(token_delay)}
    if VARIANTS[variant]:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.port}/{_slug(variant)}"
        env.update(VARIANTS[variant])
    stack, db_name = await new_stack(
        "sbbench", admin, redis, state, state / f"logs-{_slug(variant)}", env
    )
    await stack.start()
    async with stack.channel("metering") as channel:
        reply = await metering_pb2_grpc.MeteringServiceStub(channel).CreateApiKey(
            metering_pb2.CreateApiKeyRequest(account_id="bench", name="bench")
        )
    return Deployment(
        variant,
        stack,
        db_name,
        psutil.Process(stack.processes["router"].pid),
        psutil.Process(stack.processes["metering"].pid),
        stack.channel("router", bearer=""),
        reply.secret,
        reply.secret,
        reply.secret,
    )


def merged(rows: list[Result]) -> Result:
    """One variant's rounds as one row (CPU per completion weighted by completions)."""
    done = [max(1, len(row.ttft)) for row in rows]
    total = sum(done)

    def weighted(values: list[float | None]) -> float:
        return sum((v or 0.0) * n for v, n in zip(values, done, strict=True)) / total

    return Result(
        rows[0].name,
        rows[0].concurrency,
        [t for row in rows for t in row.ttft],
        sum(row.seconds for row in rows),
        sum(row.failures for row in rows),
        weighted([row.cpu_ms_per_completion for row in rows]),
        weighted([row.metering_cpu_ms_per_completion for row in rows]),
    )


def versus(level: int, traced: Result, off: Result) -> str:
    cpu = (traced.cpu_ms_per_completion or 0) - (off.cpu_ms_per_completion or 0)
    ratio = (traced.cpu_ms_per_completion or 0) / (off.cpu_ms_per_completion or 1)
    meter = (traced.metering_cpu_ms_per_completion or 0) - (off.metering_cpu_ms_per_completion or 0)
    return (
        f"  C={level:<4} {traced.name:<11} router CPU/completion {cpu:+.3f} ms ({ratio:.3f}x),"
        f" TTFT p50 {traced.ttft_p50_ms() - off.ttft_p50_ms():+.2f} ms,"
        f" metering CPU/completion {meter:+.3f} ms"
    )


METHOD = "/switchboard.router.v1.RouterService/StreamCompletion"


class _Metadata:
    """A call's metadata as the server span reads it (a client sending no traceparent)."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer sk-sb-v1-bench"), ("user-agent", "bench"))


class _Discard(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def hot_path_microseconds(calls: int = 20_000) -> dict[str, float]:
    """What a completion's tracing helpers cost in process, off and on (at 1% and 100%;
    spans discarded): the RPC's server span, the completion span, the traceparent read, the
    upstream span, in microseconds per completion. (The hot path runs in a task per call;
    here the spans made current pile up in one context, which costs nothing more.)"""
    from opentelemetry.trace import SpanKind

    from switchboard_router import genai_spans
    from switchboard_router.canonical import CompletionRequest

    request = CompletionRequest(model="switchboard/demo", messages=())
    context: Any = _Metadata()

    def one() -> None:
        server = rpc_tracing.start_server_span(METHOD, context)
        with genai_spans.completion(request, streamed=True):
            tracing.current_traceparent()
            span = tracing.start_span("POST", SpanKind.CLIENT, {"server.address": "h"})
            if span is not None:
                span.end()
        if server is not None:
            rpc_tracing.end_server_span(server, "OK")

    def timed() -> float:
        for _ in range(200):
            one()
        start = time.perf_counter()
        for _ in range(calls):
            one()
        return (time.perf_counter() - start) / calls * 1e6

    results = {"off": timed()}
    for name, sampler in (
        ("on at 1%", samplers.ParentBased(samplers.TraceIdRatioBased(0.01))),
        ("on at 100%", samplers.ALWAYS_ON),
    ):
        tracing.configure_for_test(_Discard(), sampler=sampler)
        try:
            results[name] = timed()
        finally:
            tracing.reset()
    return results


async def run(levels: list[int], requests: int, rounds: int, token_delay: float) -> int:
    state = Path(tempfile.mkdtemp(prefix="sbbench-tracing-"))
    admin, embedded_pg = find_postgres(os.environ.get("DATABASE_URL"), state / "pg")
    redis, embedded_redis = find_redis(os.environ.get("REDIS_URL"), state / "redis")
    sink = Sink()
    await sink.start()
    deployments: list[Deployment] = []
    failed = 0
    try:
        for variant in VARIANTS:
            deployments.append(await deploy(variant, admin, redis, state, token_delay, sink))
        for deployment in deployments:  # warm-up: connections, caches, lazy imports
            await measured(deployment, "warm", deployment.unlimited, 8, 100)
        hot = hot_path_microseconds()
        print(
            f"\n20-chunk streaming completions, {requests} per row in {rounds} rounds, upstream"
            f" token gap {token_delay * 1000:g} ms; logs in {state}\n"
        )
        print(
            "tracing helpers per completion (in process): "
            + ", ".join(f"{name} {us:.2f} us" for name, us in hot.items())
            + "\n"
        )
        print(HEADER)
        costs: list[str] = []
        for level in levels:
            total = max(requests, level * 4) // rounds
            rows: dict[str, list[Result]] = {d.name: [] for d in deployments}
            for round_ in range(rounds):
                order = deployments if round_ % 2 == 0 else deployments[::-1]
                for deployment in order:
                    row = await measured(
                        deployment, deployment.name, deployment.unlimited, level, total
                    )
                    rows[deployment.name].append(row)
            results = [merged(rows[d.name]) for d in deployments]
            for result in results:
                print(result.row(), flush=True)
                failed += result.failures
            costs += [versus(level, traced, results[0]) for traced in results[1:]]
        print("\nTracing versus none, same run:")
        print("\n".join(costs))
        for deployment in deployments:  # stopping exports the spans still batched
            await asyncio.to_thread(deployment.stack.stop)  # the sink answers meanwhile
        failed += _check_exports(sink)
    finally:
        for deployment in deployments:
            await deployment.channel.close(None)
            await asyncio.to_thread(deployment.stack.stop)
            await drop_database(admin, deployment.database)
        await sink.stop()
        for server in (embedded_pg, embedded_redis):
            if server is not None:
                server.stop()
    print(f"\nfailed requests: {failed}")
    return 1 if failed else 0


def _check_exports(sink: Sink) -> int:
    """Spans must come from the traced stacks, and none from the untraced one."""
    counts = {variant: sink.spans.get(_slug(variant), 0) for variant in VARIANTS}
    print("\nspans exported: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
    wrong = [v for v, n in counts.items() if (n > 0) != bool(VARIANTS[v])]
    if wrong:
        print(f"unexpected exports (none where traced, or some where not): {wrong}")
    return len(wrong)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, default=1000, help="completions per row")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per row")
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    return asyncio.run(run(args.concurrency, args.requests, args.rounds, args.token_delay))


if __name__ == "__main__":
    sys.exit(main())
