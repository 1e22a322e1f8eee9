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
import random
import signal

import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.e2e.support import GENERATIONS, Told, load, settled

pytestmark = [pytest.mark.e2e]

# Keys stay verified while metering is down; tokens come back to back.
STACK_ENV = {
    "SWITCHBOARD_KEY_CACHE_SECONDS": "600",
    "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0.01",
}


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
    await load(router, api_key, 1, told)  # warms the key cache; counted like the rest
    running = asyncio.create_task(load(router, api_key, GENERATIONS, told))
    kills = 0
    chaos = random.Random(GENERATIONS)
    loop = asyncio.get_running_loop()
    step = GENERATIONS // 5
    next_mark = step
    while not running.done():
        # Sometimes mid-start, sometimes mid-batch (metering needs ~1 s to start consuming),
        # and at the latest at every fifth of the load, however fast this machine runs it.
        deadline = loop.time() + chaos.uniform(0.2, 1.5)
        while not running.done() and loop.time() < deadline and len(told) < next_mark:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if running.done():
            break
        await kill_metering(stack)
        kills += 1
        while len(told) >= next_mark:
            next_mark += step
    failures = await running
    await stack.wait_healthy("metering", 60)
    assert kills >= 3
    assert failures == 0  # metering being down never fails a request whose key is verified
    assert len(told) == GENERATIONS + 1

    rows = await settled(database_url, api_key.api_key.id, told)
    missing = told.keys() - rows.keys()
    assert not missing, f"{len(missing)} generations never reached the ledger"
    assert rows == told  # nothing missing, nothing extra, every count and cost exact
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
    told: Told = {}
    await load(router, key, 1, told)
    running = asyncio.create_task(load(router, key, GENERATIONS, told))
    await asyncio.sleep(1.0)
    stack.processes["router"].send_signal(signal.SIGKILL)
    failures = await running
    stack.processes.pop("router").wait()
    assert told and failures  # some finished before the kill, the rest failed
    rows = await settled(database_url, key.api_key.id, told, timeout=60)
    assert {g: rows.get(g) for g in told} == told
    # Generations cut by the kill are metered as FAILED with estimated usage once metering
    # sweeps the dead router (tests/e2e/test_router_death.py); none was told, none is doubled.
    print(f"\nrouter killed after {len(told)} told generations, {failures} cut: ledger exact")
