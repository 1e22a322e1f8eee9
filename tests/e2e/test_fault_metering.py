"""Metering partitioned from the router (its link through a fault proxy) is not an outage.

Silent (blackhole): a key the router verified before keeps working past its cache time (the
last-known-good copy, for up to SWITCHBOARD_KEY_STALE_SECONDS); a key never seen fails
UNAVAILABLE with RetryInfo within about a second; a limit change on another key, announced
meanwhile, does not disturb it; a revocation announced meanwhile applies. Refused, then back:
requests succeed again within about a second of the link returning (tuned reconnect backoff).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Ports
from tests.e2e.support import auth
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e]

CACHE_SECONDS = 1.0
STACK_ENV = {"SWITCHBOARD_KEY_CACHE_SECONDS": str(CACHE_SECONDS)}
REQUEST = router_pb2.CreateCompletionRequest(
    model="switchboard/demo",
    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
    max_tokens=5,
)
Key = metering_pb2.CreateApiKeyResponse


@pytest.fixture(scope="module")
def metering_link(stack_ports: Ports) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", stack_ports.metering)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def stack_service_env(metering_link: FaultProxy) -> dict[str, dict[str, str]]:
    return {"router": {"SWITCHBOARD_METERING_ADDR": metering_link.address}}


async def ask(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: Key
) -> tuple[grpc.StatusCode, float, grpc.aio.AioRpcError | None]:
    started = time.monotonic()
    try:
        await router.CreateCompletion(REQUEST, metadata=auth(key), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), time.monotonic() - started, error
    return grpc.StatusCode.OK, time.monotonic() - started, None


def retry_delay(error: grpc.aio.AioRpcError | None) -> float | None:
    assert error is not None
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


async def new_key(metering: metering_pb2_grpc.MeteringServiceAsyncStub, account: str) -> Key:
    return await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account))


async def test_a_silent_metering_does_not_stop_keys_verified_before(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    metering_link: FaultProxy,
) -> None:
    used = await new_key(metering, "partition-a")
    other = await new_key(metering, "partition-b")
    assert (await ask(router, used))[0] == grpc.StatusCode.OK
    assert (await ask(router, other))[0] == grpc.StatusCode.OK
    never_seen = await new_key(metering, "partition-c")
    metering_link.set("blackhole")
    try:
        await asyncio.sleep(CACHE_SECONDS + 0.5)  # past the cache time
        for _ in range(5):
            code, elapsed, _error = await ask(router, used)
            assert code == grpc.StatusCode.OK
            assert elapsed < 2.5  # at most one verification deadline (0.8 s) of waiting

        code, elapsed, error = await ask(router, never_seen)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert elapsed < 2.0
        assert retry_delay(error) is not None

        # A limit change on another key, announced meanwhile, evicts that key only.
        await metering.SetKeyLimits(
            metering_pb2.SetKeyLimitsRequest(
                key_id=other.api_key.id, limits=metering_pb2.SpendLimits(daily_usd="100")
            )
        )
        await asyncio.sleep(0.5)
        assert (await ask(router, used))[0] == grpc.StatusCode.OK

        # A revocation announced meanwhile applies: the key is not served stale.
        await metering.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=used.api_key.id))
        deadline = time.monotonic() + 3
        while (code := (await ask(router, used))[0]) == grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "a revoked key kept working"
            await asyncio.sleep(0.1)
        assert code == grpc.StatusCode.UNAVAILABLE  # metering cannot say why; refused still
    finally:
        metering_link.set("pass")


async def test_requests_succeed_again_soon_after_a_refused_link_returns(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    metering_link: FaultProxy,
) -> None:
    key = await new_key(metering, "partition-d")
    metering_link.set("refuse")
    try:
        await asyncio.sleep(5)  # long enough for gRPC's default backoff to reach 2.5 s and more
        code, elapsed, _error = await ask(router, key)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert elapsed < 2.0
    finally:
        metering_link.set("pass")
    back = time.monotonic()
    while (await ask(router, key))[0] != grpc.StatusCode.OK:
        assert time.monotonic() - back < 3.0, "the router did not reconnect to metering soon"
        await asyncio.sleep(0.05)
    print(f"recovered {time.monotonic() - back:.2f} s after the link returned")
