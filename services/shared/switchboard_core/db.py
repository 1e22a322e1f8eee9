"""Postgres access (asyncpg), bounded waits on it, and versioned migrations.

Every wait on Postgres is bounded, so a silent database (a partition: nothing refused,
nothing answered) turns into an error rather than a stuck call. :func:`create_pool` sets
asyncpg's connect timeout and its default command timeout (:class:`DatabaseTimeouts`, read
from ``SWITCHBOARD_DB_CONNECT_TIMEOUT_SECONDS`` and ``SWITCHBOARD_DB_COMMAND_TIMEOUT_SECONDS``);
long writes (the ledger's batches) live within the command timeout. A request path that must
answer sooner (metering's key verification) wraps its reads in :func:`within` or
:func:`fetchrow_within`: past their bound, or when Postgres cannot be reached, the caller gets
``UNAVAILABLE`` (reason ``DATABASE_UNAVAILABLE``, with ``RetryInfo``) at once, and the
abandoned query is cancelled and cleaned up in the background (its connection's release is
bounded too: asyncpg bounds a release by the acquire's timeout).

Each service owns its tables and ships numbered SQL files (``0001_init.sql``, ...) in a
``migrations`` package. :func:`migrate` applies the new ones in order, each in its own
transaction, under an advisory lock so that replicas starting together do not race.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from switchboard_core.config import EnvReader
from switchboard_core.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_COMMAND_TIMEOUT_SECONDS = 30.0
# What "the database cannot be reached" looks like from asyncpg.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
# Cancelled queries still cleaning up (strong references until they are done).
_abandoned: set[asyncio.Future[Any]] = set()


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long a new connection may take, and any statement that sets no bound of its own."""

    connect_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    command_seconds: float = DEFAULT_COMMAND_TIMEOUT_SECONDS

    @classmethod
    def read(cls, reader: EnvReader) -> DatabaseTimeouts:
        return cls(
            connect_seconds=reader.float(
                "SWITCHBOARD_DB_CONNECT_TIMEOUT_SECONDS",
                DEFAULT_CONNECT_TIMEOUT_SECONDS,
                min_value=0.1,
            ),
            command_seconds=reader.float(
                "SWITCHBOARD_DB_COMMAND_TIMEOUT_SECONDS",
                DEFAULT_COMMAND_TIMEOUT_SECONDS,
                min_value=0.1,
            ),
        )


def database_unavailable(what: str) -> Unavailable:
    return Unavailable(
        f"{what}: the database is not answering",
        reason="DATABASE_UNAVAILABLE",
        retry_after_seconds=1.0,
    )


async def within(seconds: float, call: Awaitable[T], what: str) -> T:
    """``call``'s result, or :func:`database_unavailable` when it takes over ``seconds`` or
    the database cannot be reached. A call that overran is cancelled, not awaited."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget_abandoned)
        log.warning("database call timed out", extra={"what": what, "timeout_seconds": seconds})
        raise database_unavailable(what)
    try:
        return task.result()
    except UNREACHABLE_ERRORS as error:
        log.warning("database unreachable", extra={"what": what, "error": type(error).__name__})
        raise database_unavailable(what) from None


def _forget_abandoned(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the caller already has its answer


async def fetchrow_within(
    pool: asyncpg.Pool, seconds: float, what: str, query: str, *args: object
) -> asyncpg.Record | None:
    """``pool.fetchrow`` bounded as a whole by ``seconds`` (see :func:`within`)."""

    async def fetch() -> asyncpg.Record | None:
        async with pool.acquire(timeout=seconds) as connection:
            row: asyncpg.Record | None = await connection.fetchrow(query, *args, timeout=seconds)
            return row

    return await within(seconds, fetch(), what)


_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeouts: DatabaseTimeouts | None = None,
) -> asyncpg.Pool:
    timeouts = timeouts or DatabaseTimeouts()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeouts.connect_seconds,
        command_timeout=timeouts.command_seconds,
    )
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
