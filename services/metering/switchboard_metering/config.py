"""Metering configuration, read once from the environment (see docs/CONTRACTS.md)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from switchboard_core.budget import DEFAULT_PREFIX
from switchboard_core.config import (
    EnvReader,
    ServerConfig,
    read_database_url,
    read_redis_url,
)

SERVICE = "metering"
DEFAULT_GRPC_PORT = 50053
DEFAULT_METRICS_PORT = 9093
DEFAULT_USAGE_STREAM = "switchboard:usage"
DEFAULT_USAGE_GROUP = "metering"
# Thirteen months: a year of invoices plus the month being billed.
DEFAULT_RETENTION_DAYS = 400


def unique_consumer_name() -> str:
    """A consumer name no other process uses: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class OutboxSettings:
    """How the usage outbox (a Redis stream) is drained."""

    stream: str = DEFAULT_USAGE_STREAM
    group: str = DEFAULT_USAGE_GROUP
    consumer: str = field(default_factory=unique_consumer_name)
    batch_size: int = 500
    block_ms: int = 1000
    # Entries pending longer than this on another consumer are presumed abandoned.
    claim_idle_ms: int = 30_000
    claim_interval_seconds: float = 10.0
    max_backoff_seconds: float = 2.0

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"


@dataclass(frozen=True)
class MeteringConfig:
    server: ServerConfig
    # URLs may carry passwords: kept out of repr (and so out of logs).
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    # Where spend counters and reservations live in Redis (shared with the routers).
    budget_prefix: str = DEFAULT_PREFIX
    # Ledger rows are kept at least this many days (whole months are dropped); 0: forever.
    retention_days: int = DEFAULT_RETENTION_DAYS

    @property
    def retention(self) -> timedelta | None:
        return timedelta(days=self.retention_days) if self.retention_days else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MeteringConfig:
        reader = EnvReader(env)
        server = ServerConfig.read(reader, SERVICE, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)
        database_url = read_database_url(reader)
        redis_url = read_redis_url(reader)
        outbox = OutboxSettings(
            stream=reader.str("SWITCHBOARD_USAGE_STREAM", DEFAULT_USAGE_STREAM),
            group=reader.str("SWITCHBOARD_USAGE_GROUP", DEFAULT_USAGE_GROUP),
        )
        budget_prefix = reader.str("SWITCHBOARD_BUDGET_PREFIX", DEFAULT_PREFIX)
        retention_days = reader.int(
            "SWITCHBOARD_LEDGER_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, max_value=36_500
        )
        reader.finish()
        return cls(
            server=server,
            database_url=database_url,
            redis_url=redis_url,
            outbox=outbox,
            budget_prefix=budget_prefix,
            retention_days=retention_days,
        )
