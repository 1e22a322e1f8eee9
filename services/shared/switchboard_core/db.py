"""Postgres access (asyncpg) and versioned migrations.

Each service owns its tables and ships numbered SQL files (``0001_init.sql``, ...) in a
``migrations`` package. :func:`migrate` applies the new ones in order, each in its own
transaction, under an advisory lock so that replicas starting together do not race.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


def _migrations(package: str) -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


# One lock for every service's migrations: ``schema_migrations`` itself is shared, and
# ``CREATE TABLE IF NOT EXISTS`` is not safe against a concurrent creator.
_MIGRATION_LOCK = "switchboard.schema_migrations"


async def migrate(pool: asyncpg.Pool, service: str, package: str) -> list[str]:
    """Apply ``package``'s pending migrations for ``service``; returns the applied names.

    Each migration runs in its own transaction. A session-level advisory lock serialises
    services and replicas that start together.
    """
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       service text NOT NULL,
                       version integer NOT NULL,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (service, version))"""
            )
            done = {
                row["version"]
                for row in await conn.fetch(
                    "SELECT version FROM schema_migrations WHERE service = $1", service
                )
            }
            for version, name, sql in _migrations(package):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (service, version, name)"
                        " VALUES ($1, $2, $3)",
                        service,
                        version,
                        name,
                    )
                applied.append(name)
                log.info("migration applied", extra={"migration": name, "owner": service})
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _MIGRATION_LOCK)
    return applied
