"""The fixtures reach real servers."""

from __future__ import annotations

import asyncpg
import redis.asyncio as redis

from switchboard_core.db import create_pool, migrate
from switchboard_devstack.storage import create_database, drop_database


async def test_postgres_is_real_and_fresh(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT 1 + 1") == 2
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_name NOT IN ('schema_migrations')"
        )
        assert isinstance(tables, int)
    finally:
        await conn.close()


async def test_redis_round_trip(redis_client: redis.Redis, redis_prefix: str) -> None:
    await redis_client.set(redis_prefix + "k", b"v")
    assert await redis_client.get(redis_prefix + "k") == b"v"


async def test_migrations_apply_once(database_url: str) -> None:
    pool = await create_pool(database_url)
    try:
        first = await migrate(pool, "smoke", "tests.integration.smoke_migrations")
        second = await migrate(pool, "smoke", "tests.integration.smoke_migrations")
        assert first == ["0001_create_thing.sql"]
        assert second == []
        assert await pool.fetchval("SELECT count(*) FROM smoke_thing") == 0
    finally:
        await pool.close()


async def test_services_migrating_at_once_do_not_race(database_url: str) -> None:
    """Catalog and metering start together; both create schema_migrations if missing."""
    import asyncio
    import uuid

    name = f"race_{uuid.uuid4().hex[:8]}"
    # The URL helper keeps the query string: an embedded server's is its Unix socket's dir.
    url = await create_database(database_url, name)
    pools = [await create_pool(url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(migrate(p, "svc", "tests.integration.smoke_migrations") for p in pools)
        )
        # four replicas starting together: exactly one applies the migration
        assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    finally:
        for p in pools:
            await p.close()
        await drop_database(database_url, name)
