"""Metering's key verification with Postgres silent (API keys for routers, operator keys for
every admin call): a clear UNAVAILABLE within its bound (0.5 s), under the routers' own 0.8 s
deadline, rather than a wait on the database."""

from __future__ import annotations

import time

import grpc
import pytest

from switchboard.metering.v1 import metering_pb2
from switchboard_core.errors import error_reason
from tests.faults.links import postgres_proxy, through
from tests.integration.test_metering_app import running_metering, test_settings


async def test_verify_api_key_answers_unavailable_quickly_when_postgres_is_silent(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    proxy = postgres_proxy(database_url)
    try:
        async with running_metering(
            through(proxy, database_url), redis_url, test_settings(redis_prefix)
        ) as metering:
            created = await metering.stub.CreateApiKey(
                metering_pb2.CreateApiKeyRequest(account_id="pg-silent", name="k")
            )
            request = metering_pb2.VerifyApiKeyRequest(secret=created.secret)
            reply = await metering.router.VerifyApiKey(request, timeout=5)
            assert reply.api_key.id == created.api_key.id
            proxy.set("blackhole")
            for _ in range(3):  # the pool's connections all get stuck, one by one
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await metering.router.VerifyApiKey(request, timeout=5)
                elapsed = time.monotonic() - started
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(raised.value) == "DATABASE_UNAVAILABLE"
                assert elapsed < 1.0, elapsed
            # An operator's admin call: its key's check is bounded the same way.
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await metering.stub.CreateApiKey(
                    metering_pb2.CreateApiKeyRequest(account_id="pg-silent", name="k2"), timeout=5
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(raised.value) == "DATABASE_UNAVAILABLE"
            assert time.monotonic() - started < 1.0
            proxy.set("reset")  # free the stuck connections, so that stopping is quick
            proxy.set("pass")
    finally:
        proxy.stop()
