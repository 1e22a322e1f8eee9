"""Plaintext, as an operator may configure it behind a mesh that does TLS: allowed only when
asked for, logged as a warning at start, and still no call without a credential: the services
prove who they are with service keys (operator keys holding ``service:<name>``)."""

from __future__ import annotations

import grpc
import pytest

from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_core.channels import client_channel
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth

pytestmark = [pytest.mark.e2e]

STACK_PLAINTEXT = True


async def test_every_service_warns_that_it_serves_plaintext(stack: Stack) -> None:
    assert stack.log_dir is not None
    for name in ("router", "catalog", "metering"):
        text = (stack.log_dir / f"{name}.log").read_text()
        warnings = [
            line
            for line in text.splitlines()
            if '"level": "warning"' in line and "PLAINTEXT" in line
        ]
        assert warnings, f"{name} did not warn that it serves plaintext"


async def test_a_completion_works_with_service_keys(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
) -> None:
    request = router_pb2.StreamCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hello")],
        max_tokens=5,
    )
    messages = [m async for m in router.StreamCompletion(request, metadata=auth(api_key))]
    assert messages[-1].WhichOneof("event") == "end"


async def test_without_a_key_nobody_is_a_service(stack: Stack) -> None:
    async with client_channel(stack.address("metering"), plaintext=True) as channel:
        metering = metering_pb2_grpc.MeteringServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await metering.VerifyApiKey(metering_pb2.VerifyApiKeyRequest(secret="x"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The catalog's service key is the catalog's: it does not make its holder the router.
    catalog_key = stack.service_keys["catalog"]
    async with client_channel(stack.address("metering"), plaintext=True, bearer=catalog_key) as ch:
        metering = metering_pb2_grpc.MeteringServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await metering.RecordUsage(metering_pb2.RecordUsageRequest())
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
