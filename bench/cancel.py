"""``make bench-cancel``: how fast a client's cancel closes the provider connection.

Starts the real processes, points the demo provider at an in-process fake OpenAI server (via
the catalog admin API, as an operator would), and for each run opens a slow stream through the
router, reads the first delta, cancels the gRPC call, and times how long until the fake sees
its HTTP connection close. The baseline, measured in the same run, is a direct aiohttp stream
to the same fake closed by the client. Every cancelled generation must reach the ledger as
CANCELLED.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import grpc

from bench.stacks import bench_stack
from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.upstreams import UpstreamPolicy
from switchboard_router.providers.http import create_session
from tests.fakes import openai_server
from tests.fakes.script import FakeProvider, Script

SLOW = Script(text=tuple(f"w{i} " for i in range(2000)), chunk_delay=0.005)


def row(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100)
    return f"| {name} | {len(ms)} | {q[49]:.2f} | {q[89]:.2f} | {q[98]:.2f} | {ms[-1]:.2f} |"


async def direct(fake: FakeProvider, runs: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    async with create_session(UpstreamPolicy(["127.0.0.1"])) as session:  # a local server
        for _ in range(runs):
            fake.disconnected.clear()
            response = await session.post(
                fake.base_url + "/chat/completions",
                json={"model": "m", "messages": [], "stream": True},
                headers={"Authorization": "Bearer x"},
            )
            await response.content.readany()
            closed = loop.time()
            response.close()
            await asyncio.wait_for(fake.disconnected.wait(), 5)
            out.append(fake.disconnected_at - closed)
    return out


async def routed(
    fake: FakeProvider, stub: router_pb2_grpc.RouterServiceAsyncStub, key: str, runs: int
) -> tuple[list[float], list[str]]:
    loop = asyncio.get_running_loop()
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="go on")],
    )
    metadata = (("authorization", f"Bearer {key}"),)
    out, ids = [], []
    for _ in range(runs):
        fake.disconnected.clear()
        call = stub.StreamCompletion(request, metadata=metadata)
        start = await call.read()
        await call.read()  # the first delta
        cancelled = loop.time()
        call.cancel()
        await asyncio.wait_for(fake.disconnected.wait(), 5)
        out.append(fake.disconnected_at - cancelled)
        assert isinstance(start, router_pb2.StreamCompletionResponse)
        ids.append(start.start.generation_id)
    return out, ids


async def run(runs: int) -> int:
    missing = 0
    # The fake provider wants a key, sent only to a declared host.
    env = {
        "SWITCHBOARD_PROVIDER_KEY_SWITCHBOARD": "sk-bench",
        "SWITCHBOARD_PROVIDER_HOSTS_SWITCHBOARD": "127.0.0.1",
    }
    async with bench_stack("sbcancel", env) as stack:
        async with (
            openai_server.serve(SLOW) as fake,
            stack.channel("catalog") as catalog_channel,
            stack.channel("metering") as metering_channel,
            stack.channel("router", bearer="") as router_channel,
        ):
            catalog = catalog_pb2_grpc.CatalogServiceStub(catalog_channel)
            metering = metering_pb2_grpc.MeteringServiceStub(metering_channel)
            provider = catalog_pb2.Provider(
                id="switchboard",
                display_name="Switchboard demo",
                api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
                base_url=fake.base_url,
            )
            await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=provider))
            await asyncio.sleep(1.0)  # the router's watch picks the change up
            key = await metering.CreateApiKey(
                metering_pb2.CreateApiKeyRequest(account_id="bench", name="cancel")
            )
            stub = router_pb2_grpc.RouterServiceStub(router_channel)
            await routed(fake, stub, key.secret, 5)  # warm-up
            baseline = await direct(fake, runs)
            through, ids = await routed(fake, stub, key.secret, runs)
            await asyncio.sleep(1.0)
            for generation_id in ids:
                try:
                    row_ = await metering.GetGeneration(
                        metering_pb2.GetGenerationRequest(generation_id=generation_id)
                    )
                    if row_.generation.status != metering_pb2.GENERATION_STATUS_CANCELLED:
                        missing += 1
                except grpc.aio.AioRpcError:
                    missing += 1
        print(f"\ncancel -> provider connection closed, {runs} runs each (ms)\n")
        print("| path | n | p50 | p90 | p99 | max |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(row("direct (client closes)", baseline))
        print(row("through router (gRPC cancel)", through))
        print(f"\ncancelled generations not in the ledger as CANCELLED: {missing}")
    return 1 if missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=200)
    return asyncio.run(run(parser.parse_args().runs))


if __name__ == "__main__":
    sys.exit(main())
