"""Traffic control across two router processes sharing one Redis (docs/LIMITS.md,
docs/ROUTING.md).

The stack's router (A) and a second router process (B) on the same catalog, metering, Redis
and Postgres:

- a key limited to 60 requests per minute gets 60 of a burst of 200 split across A and B
  (GCRA refills one a second, so a burst lasting E seconds may admit up to ceil(E) more, and
  never fewer than 60); the rest are RESOURCE_EXHAUSTED with ErrorInfo RATE_LIMITED and
  RetryInfo, and another key of the same account is not slowed at all;
- a circuit breaker opened by A (a run of 5xx from the cheaper endpoint of a model) keeps B
  from sending anything to that endpoint, though B's requests sort by price and would try it
  first;
- a hedged request (fixed 200 ms delay) whose first endpoint is slow to its first token is
  served by the fast one; the slow attempt is cancelled at once and the ledger holds it as its
  own attempt, exactly, beside the winner's.

Small windows through the router's traffic-control settings (``STACK_ENV``) keep each test to
a few seconds. The upstreams are in-process OpenAI-compatible fakes with injected faults
(tests/fakes/faults.py); the rate-limit test uses the demo model.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.channels import client_channel
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Stack, wait_healthy
from switchboard_devstack.storage import free_port
from tests.e2e.support import auth
from tests.fakes import openai_server
from tests.fakes.faults import Faults
from tests.fakes.script import FakeProvider, Script

pytestmark = [pytest.mark.e2e]

RUN = uuid.uuid4().hex[:8]
BROKEN, HEALTHY, SLOW, FAST = "tcbroken", "tchealthy", "tcslow", "tcfast"
PROVIDERS = (BROKEN, HEALTHY, SLOW, FAST)
BREAKER_MODEL = f"sbtest/breaker-{RUN}"
HEDGE_MODEL = f"sbtest/hedge-{RUN}"
CONSECUTIVE_FAILURES = 3
HEDGE_DELAY_MS = 200
SLOW_FIRST_TOKEN_SECONDS = 3.0
# How long a breaker state takes to reach the other router: a flush by the router that saw
# the failures and a refresh by the other (both 0.1 s here), with room for a loaded machine.
PROPAGATION_SECONDS = 1.0

STACK_ENV = {
    **{f"SWITCHBOARD_PROVIDER_KEY_{p.upper()}": f"sk-{p}" for p in PROVIDERS},
    **{f"SWITCHBOARD_PROVIDER_HOSTS_{p.upper()}": "127.0.0.1" for p in PROVIDERS},
    # Breakers open on a run of failures only (the failure-rate rule needs more requests than
    # these tests make), and stay open for the rest of the module.
    "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": str(CONSECUTIVE_FAILURES),
    "SWITCHBOARD_BREAKER_MIN_REQUESTS": "1000",
    "SWITCHBOARD_BREAKER_OPEN_SECONDS": "120",
    "SWITCHBOARD_STATS_WINDOW_SECONDS": "10",
    "SWITCHBOARD_STATS_FLUSH_SECONDS": "0.1",
    "SWITCHBOARD_STATS_REFRESH_SECONDS": "0.1",
    # Fallbacks and hedges are what these tests exercise, not the retry budget.
    "SWITCHBOARD_RETRY_BUDGET_MIN_PER_SECOND": "100",
    "SWITCHBOARD_UPSTREAM_FIRST_BYTE_SECONDS": "10",
}


# --- the second router --------------------------------------------------------------------


def start_router(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    """Another process of the stack's router, on its own ports and spool, with the same
    settings (its log joins the stack's, so a traceback in it fails the module)."""
    assert stack.log_dir is not None
    env = {
        **stack.env_for("router"),
        "SWITCHBOARD_GRPC_PORT": str(port),
        "SWITCHBOARD_METRICS_PORT": str(free_port()),
        "SWITCHBOARD_HTTP_PORT": str(free_port()),
        "SWITCHBOARD_SPOOL_DIR": str(stack.log_dir / "router-b-spool"),
    }
    with (stack.log_dir / "router-b.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "switchboard_router"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_router(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
async def router_b(stack: Stack) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    """Router B, beside the stack's router (A)."""
    port = free_port()
    process = start_router(stack, port)
    address = f"127.0.0.1:{port}"
    _, _, ca = stack.pki.read(OPERATOR)
    try:
        await wait_healthy(client_channel(address, ca=ca), 60, process)
        async with client_channel(address, ca=ca) as channel:
            yield router_pb2_grpc.RouterServiceStub(channel)
    finally:
        stop_router(process)


# --- the model's endpoints at fakes ----------------------------------------------------------


async def add_model(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    model_id: str,
    endpoints: list[tuple[str, FakeProvider, str]],
) -> None:
    """``model_id`` served by each (provider, fake, price per million tokens, prompt and
    completion alike)."""
    model = catalog_pb2.Model(
        id=model_id,
        display_name=model_id,
        context_length=8192,
        input_modalities=["text"],
        output_modalities=["text"],
    )
    await catalog.UpsertModel(catalog_pb2.UpsertModelRequest(model=model))
    for provider, fake, price in endpoints:
        await catalog.UpsertProvider(
            catalog_pb2.UpsertProviderRequest(
                provider=catalog_pb2.Provider(
                    id=provider,
                    display_name=provider,
                    api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
                    base_url=fake.base_url,
                    dialect="openai",
                )
            )
        )
        endpoint = catalog_pb2.Endpoint(
            model_id=model_id,
            provider_id=provider,
            upstream_model="m",
            pricing=common_pb2.Pricing(prompt_usd_per_mtok=price, completion_usd_per_mtok=price),
            context_length=8192,
            status=catalog_pb2.ENDPOINT_STATUS_ACTIVE,
        )
        await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=endpoint))


@pytest.fixture(scope="module")
async def fakes(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
) -> AsyncIterator[dict[str, FakeProvider]]:
    """BREAKER_MODEL on BROKEN (cheaper; every request a 500) and HEALTHY; HEDGE_MODEL on
    SLOW (cheaper; its first token after 3 s) and FAST."""
    text = Script(text=("Hedged", " answers", " arrive", " once."))
    faults = {
        BROKEN: Faults(error_rate=1.0, error_status=500),
        HEALTHY: Faults(),
        SLOW: Faults(first_token_delay=SLOW_FIRST_TOKEN_SECONDS),
        FAST: Faults(chunk_gap=0.01),
    }
    async with AsyncExitStack() as stack:
        found = {
            p: await stack.enter_async_context(openai_server.serve(text, faults=f))
            for p, f in faults.items()
        }
        await add_model(
            catalog, BREAKER_MODEL, [(BROKEN, found[BROKEN], "1"), (HEALTHY, found[HEALTHY], "2")]
        )
        await add_model(catalog, HEDGE_MODEL, [(SLOW, found[SLOW], "1"), (FAST, found[FAST], "2")])
        yield found


async def until_routers_see(
    routers: list[router_pb2_grpc.RouterServiceAsyncStub],
    key: metering_pb2.CreateApiKeyResponse,
    model_id: str,
    endpoints: int,
) -> None:
    """Wait until every router's catalog watch brought ``model_id`` with its endpoints."""
    for router in routers:
        for _ in range(200):
            reply = await router.ListModels(
                account_pb2.ListModelsRequest(page_size=500), metadata=auth(key)
            )
            found = next((m for m in reply.models if m.id == model_id), None)
            if found is not None and len(found.endpoints) == endpoints:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"a router never saw {model_id}")


def by_price(
    model: str, hedge: common_pb2.Hedging | None = None
) -> router_pb2.StreamCompletionRequest:
    """A request that tries the cheaper endpoint first (a static order, not live routing)."""
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi there")
    return router_pb2.StreamCompletionRequest(
        model=model,
        messages=[message],
        max_tokens=32,
        provider=router_pb2.ProviderPreferences(sort=router_pb2.PROVIDER_SORT_PRICE, hedge=hedge),
    )


async def served_by(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    key: metering_pb2.CreateApiKeyResponse,
    request: router_pb2.StreamCompletionRequest,
) -> str:
    """The provider that served a completed stream."""
    messages = [m async for m in router.StreamCompletion(request, metadata=auth(key))]
    assert messages[-1].HasField("end")
    return messages[0].start.provider


# --- rate limits ---------------------------------------------------------------------------


def refusal(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], float | None]:
    """The ErrorInfo reason and metadata and the RetryInfo delay (seconds) of a refusal."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    reason, metadata, delay = "", {}, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, metadata, delay


DEMO = router_pb2.CreateCompletionRequest(
    model="switchboard/demo",
    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
    max_tokens=1,
)


async def complete(
    router: router_pb2_grpc.RouterServiceAsyncStub, key: metering_pb2.CreateApiKeyResponse
) -> grpc.aio.AioRpcError | None:
    """None when the completion was served, else the refusal."""
    try:
        await router.CreateCompletion(DEMO, metadata=auth(key), timeout=30)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def test_a_60_rpm_key_admits_60_of_a_burst_of_200_across_two_routers(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    router_b: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
) -> None:
    account = f"tc-rpm-{RUN}"
    limited = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account))
    other = await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account))
    reply = await metering.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=limited.api_key.id,
            rate_limits=metering_pb2.RateLimits(requests_per_minute=60),
        )
    )
    assert reply.api_key.rate_limits.requests_per_minute == 60
    started = time.monotonic()
    results = await asyncio.gather(
        *(complete(router if i % 2 else router_b, limited) for i in range(200))
    )
    burst_seconds = time.monotonic() - started
    refused = [r for r in results if r is not None]
    admitted = len(results) - len(refused)
    # GCRA: 60 at once, then one a second while the burst lasts; never fewer than 60.
    assert 60 <= admitted <= 60 + math.ceil(burst_seconds), (admitted, burst_seconds)
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        reason, metadata, delay = refusal(error)
        assert reason == "RATE_LIMITED", (reason, metadata)
        assert any("requests_per_minute" in v for v in metadata.values()), metadata  # the limit
        assert delay is not None and 0 < delay <= 60, delay
    # The other key of the same account is not held back, on either router.
    others = await asyncio.gather(*(complete(r, other) for r in (router, router_b) * 10))
    assert others == [None] * 20


# --- circuit breakers ----------------------------------------------------------------------


async def test_a_breaker_opened_by_one_router_is_respected_by_the_other(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    router_b: router_pb2_grpc.RouterServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: dict[str, FakeProvider],
) -> None:
    await until_routers_see([router, router_b], api_key, BREAKER_MODEL, 2)
    broken = fakes[BROKEN]
    # Through A: each request tries BROKEN first (500), then falls back to HEALTHY; after the
    # run of failures A's breaker opens and A stops asking BROKEN.
    for _ in range(CONSECUTIVE_FAILURES + 3):
        assert await served_by(router, api_key, by_price(BREAKER_MODEL)) == HEALTHY
    assert len(broken.requests) == CONSECUTIVE_FAILURES, "router A kept asking the broken one"
    await asyncio.sleep(PROPAGATION_SECONDS)
    # Through B: the same price order, yet nothing reaches BROKEN.
    for _ in range(10):
        assert await served_by(router_b, api_key, by_price(BREAKER_MODEL)) == HEALTHY
    assert len(broken.requests) == CONSECUTIVE_FAILURES, "router B sent to an open endpoint"


# --- hedging -------------------------------------------------------------------------------


async def ledger_rows(database_url: str, generation_id: str, count: int) -> list[asyncpg.Record]:
    """The ledger rows of the generation and of the attempts it beat (a hedge's loser is its
    own generation, ``<id>-a<attempt>``: docs/ROUTING.md), once there are ``count`` of them
    (or 10 s passed)."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(200):
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT attempt, provider_id, endpoint_id, status, prompt_tokens,"
                " completion_tokens, cost FROM generations"
                " WHERE generation_id = $1 OR generation_id LIKE $2 ORDER BY attempt",
                generation_id,
                generation_id + "-a%",
            )
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return rows


async def key_spend(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub, key_id: str, expected: Decimal
) -> Decimal:
    """The key's total spend once it reached ``expected`` (or 5 s passed)."""
    spent = Decimal(0)
    for _ in range(100):
        balance = await metering.GetBalance(metering_pb2.GetBalanceRequest(key_id=key_id))
        spent = Decimal(balance.key.spent_total_usd or "0")
        if spent >= expected:
            return spent
        await asyncio.sleep(0.05)
    return spent


async def test_hedging_serves_the_fast_endpoint_and_the_ledger_holds_the_loser_exactly(
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    fakes: dict[str, FakeProvider],
    database_url: str,
) -> None:
    await until_routers_see([router], api_key, HEDGE_MODEL, 2)
    key = await metering.CreateApiKey(
        metering_pb2.CreateApiKeyRequest(account_id=f"tc-hedge-{RUN}")
    )
    slow, fast = fakes[SLOW], fakes[FAST]
    slow.disconnected.clear()
    hedge = common_pb2.Hedging(mode=common_pb2.Hedging.MODE_FIXED_DELAY, delay_ms=HEDGE_DELAY_MS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first_delta_at = 0.0
    messages: list[router_pb2.StreamCompletionResponse] = []
    async for message in router.StreamCompletion(
        by_price(HEDGE_MODEL, hedge=hedge), metadata=auth(key)
    ):
        if message.HasField("delta") and not first_delta_at:
            first_delta_at = loop.time()
        messages.append(message)
    # One stream, from the fast endpoint, well before the slow one's first token.
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1
    start, end = messages[0].start, messages[-1].end
    assert start.provider == FAST
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == fast.script.full_text
    assert first_delta_at - started < SLOW_FIRST_TOKEN_SECONDS / 2
    assert (len(slow.requests), len(fast.requests)) == (1, 1)  # the slow one was asked first
    # The loser is cancelled at once: its connection closes as the winner's first token comes.
    await asyncio.wait_for(slow.disconnected.wait(), 2)
    assert slow.disconnected_at - first_delta_at < 0.5
    # The ledger: the winner as the client was told, and the loser as its own attempt.
    rows = await ledger_rows(database_url, start.generation_id, 2)
    assert len(rows) == 2, rows
    winner = next(r for r in rows if r["provider_id"] == FAST)
    loser = next(r for r in rows if r["provider_id"] == SLOW)
    assert winner["status"] == metering_pb2.GENERATION_STATUS_COMPLETED
    assert (winner["prompt_tokens"], winner["completion_tokens"]) == (
        end.usage.prompt_tokens,
        end.usage.completion_tokens,
    )
    assert winner["cost"] == Decimal(end.cost_usd)
    assert loser["attempt"] != winner["attempt"]
    assert loser["status"] == metering_pb2.GENERATION_STATUS_CANCELLED
    assert loser["completion_tokens"] == 0  # it never sent a token
    # Priced exactly at the slow endpoint's $1 per million tokens.
    assert loser["cost"] == Decimal(loser["prompt_tokens"]) / 1_000_000
    # The key is charged what the ledger holds: both attempts, nothing else.
    total = winner["cost"] + loser["cost"]
    assert await key_spend(metering, key.api_key.id, total) == total
