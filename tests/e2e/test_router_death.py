"""A router killed with SIGKILL mid-stream, over real processes: the spend-limited key's
reservation returns within the heartbeat TTL plus the sweep interval (not after the longest a
request may take), and the generation it cut is in the ledger once, as FAILED with estimated
usage, its cost counted in the key's Redis spend. Then the router is started again."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal

import grpc
import pytest

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.budget import BudgetStore
from switchboard_core.redis_client import create_redis
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth, ledger_entry, limited_key

pytestmark = [pytest.mark.e2e]

HEARTBEAT_TTL = 2.0
SWEEP = 0.5
STACK_ENV = {
    "SWITCHBOARD_ROUTER_HEARTBEAT_SECONDS": "0.5",
    "SWITCHBOARD_ROUTER_HEARTBEAT_TTL_SECONDS": str(HEARTBEAT_TTL),
    "SWITCHBOARD_ROUTER_SWEEP_SECONDS": str(SWEEP),
    # A reply of 400 tokens, 50 ms apart: 20 s, far longer than the test needs.
    "SWITCHBOARD_DEMO_REPLY_TOKENS": "400",
    "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0.05",
}
# Time to notice the kill (TTL), to the next sweep, and for this test's polling and the GetBalance
# round trips.
PROMISED_SECONDS = HEARTBEAT_TTL + SWEEP
SLACK_SECONDS = 1.5


def ask(max_tokens: int = 1000) -> router_pb2.StreamCompletionRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="tell me a long story")
    return router_pb2.StreamCompletionRequest(
        model="switchboard/demo", messages=[message], max_tokens=max_tokens
    )


async def reserved(metering: metering_pb2_grpc.MeteringServiceAsyncStub, key_id: str) -> Decimal:
    reply = await metering.GetBalance(metering_pb2.GetBalanceRequest(key_id=key_id))
    return Decimal(reply.key.reserved_usd or "0")


async def serving_again(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: metering_pb2.CreateApiKeyResponse
) -> None:
    """Wait until the restarted router completes a request."""
    deadline = time.monotonic() + 60
    while True:
        try:
            replies = [m async for m in router.StreamCompletion(ask(3), metadata=auth(key))]
            assert replies[-1].HasField("end")
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() < deadline, "the router did not come back"
            await asyncio.sleep(0.2)


async def test_kill_9_router_mid_stream_releases_the_reservation_and_records_the_cut_generation(
    stack: Stack,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    redis_url: str,
    budget_prefix: str,
) -> None:
    key = await limited_key(metering, "death", metering_pb2.SpendLimits(total_usd="1"))
    call = router.StreamCompletion(ask(), metadata=auth(key))
    stream = aiter(call)
    first = await anext(stream)
    assert first.HasField("start")
    generation_id = first.start.generation_id
    chars = 0
    began = time.monotonic()
    # Past a few heartbeats, so the router has written the generation's progress.
    while chars < 100 or time.monotonic() - began < 1.5:
        message = await anext(stream)
        assert message.HasField("delta")
        chars += len(message.delta.text)
    assert await reserved(metering, key.api_key.id) > 0

    proc = stack.processes["router"]
    proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.to_thread(proc.wait)
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in stream:
            pass

    while await reserved(metering, key.api_key.id) > 0:
        assert time.monotonic() - killed < PROMISED_SECONDS + SLACK_SECONDS, "still reserved"
        await asyncio.sleep(0.05)
    released_after = time.monotonic() - killed

    entry = await ledger_entry(metering, generation_id)
    assert entry.status == metering_pb2.GENERATION_STATUS_FAILED
    assert entry.finish_reason == common_pb2.FINISH_REASON_ERROR
    assert entry.usage.estimated
    # The completion as streamed at the router's last heartbeat, at most 0.5 s before the kill
    # (about 4 characters a token; the router may have been a few words ahead of this client).
    assert chars // 8 <= entry.usage.completion_tokens <= (chars + 100) // 4
    cost = Decimal(entry.cost_usd)
    assert cost > 0
    client = create_redis(redis_url)
    try:  # the reservation was settled to the cut generation's cost, once
        spend = await BudgetStore(client, budget_prefix).key_spend(
            key.api_key.id, key.api_key.account_id
        )
    finally:
        await client.aclose()
    assert (spend.reserved, spend.total) == (Decimal(0), cost)

    stack.start_process("router")  # for whatever runs next
    await serving_again(router, key)
    print(
        f"\nrouter killed after {chars} characters: reservation back to 0 after"
        f" {released_after:.2f} s (promised {PROMISED_SECONDS} s), ledger: FAILED,"
        f" {entry.usage.completion_tokens} estimated completion tokens, ${cost}"
    )
