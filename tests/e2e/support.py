"""Helpers the e2e modules share."""

from __future__ import annotations

import asyncio
import os
import ssl
from decimal import Decimal

import asyncpg
import grpc

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_devstack.stack import Stack
from tests.fakes.script import FakeProvider

# Credentials the stack's router sends to the fake providers (which check them).
PROVIDER_KEYS = {
    "anthropic": "sk-ant-e2e",
    "google": "gm-e2e",
    "openai": "sk-oai-e2e",
    "deepseek": "sk-ds-e2e",
}


async def limited_key(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    account_id: str,
    limits: metering_pb2.SpendLimits,
) -> metering_pb2.CreateApiKeyResponse:
    """A new key of ``account_id`` with ``limits``, set before its first request."""
    key = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account_id))
    await metering.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(key_id=key.api_key.id, limits=limits)
    )
    return key


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


# Crash tests: streamed load, and the ledger compared with what clients were told.

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


# Until the router's catalog points a provider at its fake, the provider's credential is
# withheld from the old host (FAILED_PRECONDITION) or the old host is unreachable
# (UNAVAILABLE).
WAITING_FOR_CATALOG = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)


async def stream_to_fake(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    request: router_pb2.StreamCompletionRequest,
    fake: FakeProvider,
) -> list[router_pb2.StreamCompletionResponse]:
    """Stream once the router's catalog points at the fake (the watch takes a moment)."""
    for _ in range(100):
        seen = len(fake.requests)
        try:
            return [m async for m in router.StreamCompletion(request, metadata=auth(key))]
        except grpc.aio.AioRpcError as error:
            if len(fake.requests) > seen or error.code() not in WAITING_FOR_CATALOG:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the router never reached the fake provider")


async def add_demo_model(catalog: catalog_pb2_grpc.CatalogServiceAsyncStub, model_id: str) -> str:
    """A new model served by the demo upstream, added through the catalog's admin API."""
    await catalog.UpsertModel(
        catalog_pb2.UpsertModelRequest(
            model=catalog_pb2.Model(
                id=model_id,
                display_name=f"Test model {model_id}",
                context_length=8192,
                input_modalities=["text"],
                output_modalities=["text"],
            )
        )
    )
    await catalog.UpsertEndpoint(
        catalog_pb2.UpsertEndpointRequest(
            endpoint=catalog_pb2.Endpoint(
                id=f"switchboard:{model_id}",
                model_id=model_id,
                provider_id="switchboard",
                upstream_model="demo",
                pricing=common_pb2.Pricing(prompt_usd_per_mtok="1", completion_usd_per_mtok="2"),
                context_length=8192,
                supported_parameters=["max_tokens"],
                status=catalog_pb2.ENDPOINT_STATUS_ACTIVE,
            )
        )
    )
    return model_id


def edge_url(stack: Stack) -> str:
    """The router's HTTP edge (OpenAI's SDKs add ``/v1``; Anthropic's use it as it is)."""
    return f"https://127.0.0.1:{stack.ports.router_http}"


def edge_trust(stack: Stack) -> ssl.SSLContext:
    """Trust in the stack's development CA, for HTTP clients of the edge."""
    return ssl.create_default_context(cafile=str(stack.pki.ca))
