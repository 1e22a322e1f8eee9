"""A real three-node Redis Cluster for the tests here, started once per session.

Three ``redis-server --cluster-enabled yes`` processes on free ports (and free bus ports, the
port + 10000) in a temporary directory, joined by ``redis-cli --cluster create`` with no
replicas; the fixture waits (bounded) until every node reports ``cluster_state:ok`` and kills
them at the end. Skipped, saying why, only when ``redis-server`` or ``redis-cli`` is absent.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from switchboard_core.redis_client import create_redis
from switchboard_devstack.storage import bindable

NODES = 3
START_SECONDS = 20.0  # the whole cluster up, or the session fails


def _ports(count: int) -> list[int]:
    """Ports free with their cluster bus port (+10000)."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20000, 39999)
        if port not in found and bindable(port) and bindable(port + 10000):
            found.append(port)
    return found


def _wait_ready(ports: list[int], deadline: float) -> None:
    for port in ports:
        while True:
            reply = subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=5
            )
            if reply.stdout.strip() == "PONG":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not answer")
            time.sleep(0.05)


def _wait_ok(ports: list[int], deadline: float) -> None:
    for port in ports:
        while True:
            info = subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if "cluster_state:ok" in info:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} not ok: {info[:200]!r}")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Redis Cluster tests need {' and '.join(missing)} on PATH")
    base: Path = tmp_path_factory.mktemp("redis-cluster")
    ports = _ports(NODES)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(base / f"nodes-{port}.conf"),
                        "--cluster-node-timeout", "2000",
                        "--dir", str(base),
                        "--dbfilename", f"dump-{port}.rdb",
                        "--save", "",
                        "--appendonly", "no",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        deadline = time.monotonic() + START_SECONDS
        _wait_ready(ports, deadline)
        subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=START_SECONDS,
        )  # fmt: skip
        _wait_ok(ports, deadline)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=10)


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[redis.Redis]:
    """A cluster client made as the services make theirs (SWITCHBOARD_REDIS_CLUSTER=true)."""
    client = create_redis(cluster_url, timeout=5.0, cluster=True)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    """Keys of one test, apart from every other's (the cluster lives for the session)."""
    return f"sbc:{uuid.uuid4().hex[:8]}:"
