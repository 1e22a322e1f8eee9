"""Crash safety of the usage path, over real processes.

While streamed generations run through the router, metering is killed with SIGKILL again and
again (and restarted); afterwards the ledger holds exactly the usage and cost every client was
told, for every generation, once. Then the router itself is killed mid-load: every generation
whose final message reached a client is in the ledger exactly once.

The suite runs a short version (``SWITCHBOARD_CRASH_GENERATIONS``, default 600); ``make soak``
runs 5,000.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from decimal import Decimal

import asyncpg
import grpc
import pytest

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Stack, wait_healthy
from tests.e2e.support import auth

pytestmark = [pytest.mark.e2e]

# Keys stay verified while metering is down; tokens come back to back.
STACK_ENV = {
    "SWITCHBOARD_KEY_CACHE_SECONDS": "600",
    "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0.01",
}
GENERATIONS = int(os.environ.get("SWITCHBOARD_CRASH_GENERATIONS", "600"))
CONCURRENCY = 32

Told = dict[str, tuple[int, int, Decimal]]  # generation id -> prompt, completion, cost


def ask(i: int) -> router_pb2.StreamCompletionRequest:
    text = f"generation number {i}" + " more" * (i % 7)
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)
    return router_pb2.StreamCompletionRequest(
        model="switchboard/demo", messages=[message], max_tokens=5 + i % 16
    )


async def load(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    total: int,
    told: Told,
) -> int:
    """Run ``total`` streams; record what each completed one told its client. Returns failures."""
    failures = 0
    next_index = 0

    async def worker() -> None:
        nonlocal failures, next_index
        while next_index < total:
            i = next_index
            next_index += 1
            generation_id, end = "", None
            try:
                async for message in router.StreamCompletion(ask(i), metadata=auth(key)):
                    if message.HasField("start"):
                        generation_id = message.start.generation_id
                    elif message.HasField("end"):
                        end = message.end
            except grpc.aio.AioRpcError:
                failures += 1
                continue
            assert end is not None
            usage = end.usage
            told[generation_id] = (
                usage.prompt_tokens,
                usage.completion_tokens,
                Decimal(end.cost_usd),
            )

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return failures


async def ledger_rows(database_url: str, key_id: str) -> Told:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT generation_id, prompt_tokens, completion_tokens, cost FROM generations"
            " WHERE key_id = $1",
            key_id,
        )
    finally:
        await conn.close()
    return {
        r["generation_id"]: (r["prompt_tokens"], r["completion_tokens"], r["cost"]) for r in rows
    }


async def settled(database_url: str, key_id: str, told: Told, timeout: float = 90.0) -> Told:
    """The key's ledger once it holds every told generation (or the timeout passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = await ledger_rows(database_url, key_id)
        if told.keys() <= rows.keys() or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def kill_metering(stack: Stack) -> None:
    """SIGKILL metering and start a new one at once (it may be killed again while starting)."""
    proc = stack.processes["metering"]
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    stack.start_process("metering")


async def test_kill_9_metering_again_and_again_loses_and_doubles_nothing(
    stack: Stack,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    database_url: str,
) -> None:
    told: Told = {}
    _ = [m async for m in router.StreamCompletion(ask(0), metadata=auth(api_key))]  # warm the key
    running = asyncio.create_task(load(router, api_key, GENERATIONS, told))
    kills = 0
    chaos = random.Random(GENERATIONS)
    while not running.done():
        # Sometimes mid-start, sometimes mid-batch: metering needs ~1 s to start consuming.
        await asyncio.wait({running}, timeout=chaos.uniform(0.2, 1.5))
        if not running.done():
            await kill_metering(stack)
            kills += 1
    failures = await running
    await wait_healthy(f"127.0.0.1:{stack.ports.metering}", 60, stack.processes["metering"])
    assert kills >= 3
    assert failures == 0  # metering being down never fails a request whose key is verified
    assert len(told) == GENERATIONS

    rows = await settled(database_url, api_key.api_key.id, told)
    missing = told.keys() - rows.keys()
    assert not missing, f"{len(missing)} generations never reached the ledger"
    told_rows = {g: rows[g] for g in told}
    assert told_rows == told  # every count and every cost exactly as the client was told
    assert sum(c for _, _, c in told.values()) == sum(c for _, _, c in told_rows.values())
    print(  # shown by `make soak` (pytest -s)
        f"\n{len(told)} generations, metering killed {kills} times: ledger exact,"
        f" total ${sum(c for _, _, c in told.values())}"
    )


async def test_kill_9_router_mid_load_every_told_generation_is_metered_once(
    stack: Stack,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    database_url: str,
) -> None:
    key = await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="e2e", name="crash")
    )
    _ = [m async for m in router.StreamCompletion(ask(0), metadata=auth(key))]
    told: Told = {}
    running = asyncio.create_task(load(router, key, GENERATIONS, told))
    await asyncio.sleep(1.0)
    stack.processes["router"].send_signal(signal.SIGKILL)
    failures = await running
    stack.processes.pop("router").wait()
    assert told and failures  # some finished before the kill, the rest failed
    rows = await settled(database_url, key.api_key.id, told, timeout=60)
    assert {g: rows.get(g) for g in told} == told
    print(f"\nrouter killed after {len(told)} told generations, {failures} cut: ledger exact")
