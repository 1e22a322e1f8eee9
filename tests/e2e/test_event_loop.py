"""The services on uvloop (SWITCHBOARD_EVENT_LOOP=uvloop) as real processes: each runs on it,
a streamed completion passes through grpc.aio, the HTTP edge (aiohttp), Redis (a key with a
spend limit reserves and settles) and metering's ledger (asyncpg), and each service stops
cleanly on SIGTERM (``loop.add_signal_handler``)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_demo.upstream import reply_words
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth, edge_trust, edge_url, ledger_entry, limited_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps"),
]

STACK_ENV = {"SWITCHBOARD_EVENT_LOOP": "uvloop"}
SERVICES = ("router", "metering", "catalog", "demo")


def loop_loaded(pid: int) -> bool:
    """Whether uvloop's extension is mapped in process ``pid`` (imported only when chosen)."""
    return "/uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()


async def test_every_service_runs_on_uvloop(stack: Stack) -> None:
    assert {name: loop_loaded(stack.processes[name].pid) for name in SERVICES} == dict.fromkeys(
        SERVICES, True
    )


async def test_a_limited_stream_is_relayed_reserved_and_metered(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    key = await limited_key(metering, "e2e-uvloop", metering_pb2.SpendLimits(daily_usd="10"))
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="on uvloop")],
    )
    messages = [m async for m in router.StreamCompletion(request, metadata=auth(key))]
    assert "".join(m.delta.text for m in messages) == " ".join(reply_words(20))
    row = await ledger_entry(metering, messages[0].start.generation_id)
    assert row.status == metering_pb2.GENERATION_STATUS_COMPLETED
    assert row.cost_usd == messages[-1].end.cost_usd


async def test_the_http_edge_streams(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub, stack: Stack
) -> None:
    key = await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id="e2e-uvloop", name="edge")
    )
    async with (
        httpx.AsyncClient(verify=edge_trust(stack), timeout=30) as http,
        http.stream(
            "POST",
            f"{edge_url(stack)}/v1/chat/completions",
            json={
                "model": "switchboard/demo",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
            headers={"Authorization": f"Bearer {key.secret}"},
        ) as response,
    ):
        raw = b"".join([part async for part in response.aiter_bytes()])
    assert response.status_code == 200
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_each_service_stops_cleanly_on_sigterm(stack: Stack) -> None:
    for name in SERVICES:
        process = stack.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0, name
