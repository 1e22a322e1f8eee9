"""Helpers the e2e modules share."""

from __future__ import annotations

import asyncio

import grpc

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc

# Credentials the stack's router sends to the fake providers (which check them).
PROVIDER_KEYS = {"anthropic": "sk-ant-e2e", "google": "gm-e2e", "openai": "sk-oai-e2e"}


def auth(key: metering_pb2.CreateApiKeyResponse) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key.secret}"),)


async def ledger_entry(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub, generation_id: str
) -> metering_pb2.UsageEvent:
    """Wait for the outbox to carry the generation into the ledger."""
    for _ in range(100):
        try:
            reply = await metering.GetGeneration(
                metering_pb2.GetGenerationRequest(generation_id=generation_id)
            )
            return reply.generation
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            await asyncio.sleep(0.05)
    raise AssertionError(f"{generation_id} never reached the ledger")
