"""Crash safety when the storage itself fails: while streamed generations run, this module's
own PostgreSQL is crashed (immediate shutdown, WAL recovery on restart) and its own Redis is
killed with SIGKILL (append-only file, fsync always), each then restarted. Requests that
cannot be metered fail with UNAVAILABLE instead of ending; every generation a client was told
about is in the ledger exactly once, with exactly the usage and cost it was told. A quarter of
the load runs on a key with a spend limit: while Redis is down its requests are refused
(limits that cannot be checked are not waived), and afterwards its reservations are back to
zero and its Redis spend equals its ledger spend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import router_pb2_grpc
from switchboard_core.budget import BudgetStore
from switchboard_core.redis_client import create_redis
from switchboard_devstack.stack import Stack
from switchboard_devstack.storage import create_database
from tests.e2e.restartable import RestartablePostgres, RestartableRedis
from tests.e2e.support import GENERATIONS, Told, limited_key, load, settled

pytestmark = [pytest.mark.e2e]

ALLOWED_TRACEBACK_LOGGERS = ("asyncpg.pool",)
STACK_ENV = {
    "SWITCHBOARD_KEY_CACHE_SECONDS": "600",
    "SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0.01",
}


@pytest.fixture(scope="module")
def storage(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RestartablePostgres, RestartableRedis]]:
    root: Path = tmp_path_factory.mktemp("own-storage")
    postgres, redis = RestartablePostgres(root / "pg"), RestartableRedis(root / "redis")
    postgres.start()
    redis.start()
    yield postgres, redis
    redis.stop()
    postgres.stop()


@pytest.fixture(scope="module")
async def database_url(storage: tuple[RestartablePostgres, RestartableRedis]) -> str:
    return await create_database(storage[0].url, "switchboard")


@pytest.fixture(scope="module")
def redis_url(storage: tuple[RestartablePostgres, RestartableRedis]) -> str:
    return storage[1].url


async def when_told(told: Told, count: int, running: asyncio.Task[int]) -> None:
    while len(told) < count and not running.done():  # noqa: ASYNC110 (polling a dict)
        await asyncio.sleep(0.02)


async def test_postgres_crash_and_redis_kill_lose_and_double_nothing(
    stack: Stack,
    storage: tuple[RestartablePostgres, RestartableRedis],
    router: router_pb2_grpc.RouterServiceAsyncStub,
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    api_key: metering_pb2.CreateApiKeyResponse,
    database_url: str,
    redis_url: str,
    budget_prefix: str,
) -> None:
    postgres, redis = storage
    told: Told = {}
    limited = await limited_key(metering, "limited", metering_pb2.SpendLimits(daily_usd="1000"))
    told_limited: Told = {}
    await load(router, api_key, 1, told)  # warms the key cache; counted like the rest
    await load(router, limited, 1, told_limited)
    running = asyncio.create_task(load(router, api_key, GENERATIONS, told))
    running_limited = asyncio.create_task(load(router, limited, GENERATIONS // 4, told_limited))

    await when_told(told, GENERATIONS // 4, running)
    await asyncio.to_thread(postgres.crash)
    await asyncio.sleep(1.0)  # requests go on; usage waits in the Redis outbox
    await asyncio.to_thread(postgres.start)

    await when_told(told, GENERATIONS // 2, running)
    await asyncio.to_thread(redis.crash)
    await asyncio.sleep(0.5)  # usage goes straight to metering's RecordUsage meanwhile
    await asyncio.to_thread(redis.start)

    failures = await running
    limited_failures = await running_limited
    assert len(told) + failures == GENERATIONS + 1
    assert len(told) > GENERATIONS // 2
    assert len(told_limited) + limited_failures == GENERATIONS // 4 + 1
    await stack.wait_healthy("metering", 30)
    for key, key_told in ((api_key, told), (limited, told_limited)):
        rows = await settled(database_url, key.api_key.id, key_told)
        missing = key_told.keys() - rows.keys()
        assert not missing, f"{len(missing)} told generations are not in the ledger"
        assert rows == key_told  # nothing missing, nothing extra, every count and cost exact

    # The limited key's budget survived Redis's SIGKILL: every reservation settled (settles
    # retry while Redis restarts), and Redis counted exactly the spend the ledger holds.
    client = create_redis(redis_url)
    store = BudgetStore(client, budget_prefix)
    ledger_spend = sum((cost for _, _, cost in told_limited.values()), Decimal(0))
    try:
        for _ in range(300):
            spend = await store.key_spend(limited.api_key.id, limited.api_key.account_id)
            if spend.reserved == 0 and spend.total == ledger_spend:
                break
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    assert (spend.reserved, spend.total) == (Decimal(0), ledger_spend)
    print(
        f"\n{len(told)} generations told, {failures} refused during the outages: ledger exact;"
        f" limited key: {len(told_limited)} told, {limited_failures} refused, Redis spend"
        f" ${spend.total} = ledger, nothing left reserved"
    )
