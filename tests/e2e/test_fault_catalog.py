"""The router's catalog watch across a silent partition (its catalog link through a fault
proxy): the partition is noticed within the keepalive interval (the snapshot-age metric
rises), requests for models the router knows keep working on the last snapshot, and a model
added meanwhile becomes routable within a few seconds of the link returning."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import pytest

from switchboard.catalog.v1 import catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Ports, Stack
from tests.e2e.support import add_demo_model, auth
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e]

PARTITION_SECONDS = 10.0
AGE_METRIC = 'switchboard_catalog_snapshot_age_seconds{watch="catalog-watch"}'
NEW_MODEL = f"sbtest/partition-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def catalog_link(stack_ports: Ports) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", stack_ports.catalog)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def stack_service_env(catalog_link: FaultProxy) -> dict[str, dict[str, str]]:
    return {"router": {"SWITCHBOARD_CATALOG_ADDR": catalog_link.address}}


def _request(model: str) -> router_pb2.CreateCompletionRequest:
    return router_pb2.CreateCompletionRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
        max_tokens=5,
    )


async def ask(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    model: str,
) -> grpc.StatusCode:
    try:
        await router.CreateCompletion(_request(model), metadata=auth(key), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _scrape_age(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(AGE_METRIC):
                return float(line.split()[-1])
    raise AssertionError(f"{AGE_METRIC} not exported")


async def snapshot_age(stack: Stack) -> float:
    return await asyncio.to_thread(_scrape_age, stack.ports.router_metrics)


async def test_a_model_added_during_a_partition_is_routable_soon_after_it(
    stack: Stack,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    catalog_link: FaultProxy,
) -> None:
    assert await ask(router, api_key, "switchboard/demo") == grpc.StatusCode.OK
    assert await snapshot_age(stack) == 0.0
    catalog_link.set("blackhole")
    try:
        await add_demo_model(catalog, NEW_MODEL)
        started = time.monotonic()
        highest = 0.0
        while time.monotonic() - started < PARTITION_SECONDS:
            # The last snapshot keeps serving the models the router knows.
            assert await ask(router, api_key, "switchboard/demo") == grpc.StatusCode.OK
            highest = max(highest, await snapshot_age(stack))
            await asyncio.sleep(0.5)
        # Noticed within the keepalive interval (5 s + 2 s), so it has been growing since.
        assert highest > 1.0
        assert await ask(router, api_key, NEW_MODEL) != grpc.StatusCode.OK
    finally:
        catalog_link.set("pass")
    back = time.monotonic()
    while await ask(router, api_key, NEW_MODEL) != grpc.StatusCode.OK:
        assert time.monotonic() - back < 8.0, "the new model did not become routable soon"
        await asyncio.sleep(0.1)
    print(f"routable {time.monotonic() - back:.2f} s after the link returned")
    assert await snapshot_age(stack) == 0.0
