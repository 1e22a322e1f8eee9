"""Metering configuration, read once from the environment (docs/CONFIGURATION.md)."""

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
    read_redis_cluster,
    read_redis_url,
    read_usage_stream,
)
from switchboard_core.db import DatabaseTimeouts
from switchboard_core.liveness import (
    DEFAULT_HEARTBEAT_TTL_SECONDS,
    DEFAULT_SWEEP_SECONDS,
    read_heartbeat_ttl,
)
from switchboard_core.tracing_config import TracingConfig
from switchboard_core.usage_bounds import DEFAULT_MAX_EVENT_AGE_DAYS
from switchboard_core.usage_outbox import DEFAULT_USAGE_STREAM
from switchboard_metering.cost_check import (
    DEFAULT_PRICE_LAG_SECONDS,
    DEFAULT_PRICE_SETTLE_SECONDS,
)
from switchboard_metering.event_rules import (
    DEFAULT_MAX_CLOCK_SKEW_SECONDS,
    EventWindow,
)

SERVICE = "metering"
DEFAULT_GRPC_PORT = 50053
DEFAULT_METRICS_PORT = 9093
DEFAULT_USAGE_GROUP = "metering"
# Thirteen months: a year of invoices plus the month being billed.
DEFAULT_RETENTION_DAYS = 400
DEFAULT_CATALOG_ADDR = "127.0.0.1:50052"
# Under the routers' default SWITCHBOARD_KEY_VERIFY_TIMEOUT_SECONDS (0.8).
DEFAULT_KEY_VERIFY_DB_SECONDS = 0.5
# The routers' own default for SWITCHBOARD_MAX_REQUEST_SECONDS.
DEFAULT_MAX_REQUEST_SECONDS = 600.0


def unique_consumer_name() -> str:
    """A consumer name no other process uses: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


LINGER_SECONDS = 0.01


@dataclass(frozen=True)
class OutboxSettings:
    """How the usage outbox (a Redis stream) is drained."""

    stream: str = DEFAULT_USAGE_STREAM
    group: str = DEFAULT_USAGE_GROUP
    consumer: str = field(default_factory=unique_consumer_name)
    batch_size: int = 500
    block_ms: int = 1000
    # After a read that found the stream nearly empty, wait this long for more before writing:
    # a trickle then goes to the ledger a few events per transaction instead of one, for a
    # little more delay (the events are durable in the stream meanwhile). 0: write at once.
    linger_seconds: float = LINGER_SECONDS
    # Entries pending longer than this on another consumer are presumed abandoned.
    claim_idle_ms: int = 30_000
    claim_interval_seconds: float = 10.0
    max_backoff_seconds: float = 2.0
    # How often the registry of the outbox's other streams is read (outbox_streams.py).
    discover_seconds: float = 5.0

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"


@dataclass(frozen=True)
class MeteringConfig:
    server: ServerConfig
    # URLs may carry passwords: kept out of repr (and so out of logs).
    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    # REDIS_URL names a node of a Redis Cluster (SWITCHBOARD_REDIS_CLUSTER).
    redis_cluster: bool = False
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    # Where spend counters and reservations live in Redis (shared with the routers).
    budget_prefix: str = DEFAULT_PREFIX
    # Ledger rows are kept at least this many days (whole months are dropped); 0: forever.
    retention_days: int = DEFAULT_RETENTION_DAYS
    # Usage events dated more than this many days ago are refused (whatever the retention).
    max_event_age_days: int = DEFAULT_MAX_EVENT_AGE_DAYS
    # ... and so are those dated more than this many seconds ahead of metering's clock.
    max_clock_skew_seconds: int = DEFAULT_MAX_CLOCK_SKEW_SECONDS
    # Routers whose heartbeat expired are swept this often (switchboard_core.liveness); the
    # routers' heartbeat TTL is also how long Redis must have been up before a sweep.
    sweep_seconds: float = DEFAULT_SWEEP_SECONDS
    heartbeat_ttl_seconds: float = DEFAULT_HEARTBEAT_TTL_SECONDS
    # The catalog, watched for the prices every usage cost is checked against
    # (switchboard_metering.cost_check). Empty: not watched, costs go unverified (counted).
    catalog_addr: str = ""
    # How long the outbox waits at start for the first view of those prices.
    catalog_wait_seconds: float = 10.0
    # A router may charge a price this long after the catalog changed it: the routers'
    # longest request (their SWITCHBOARD_MAX_REQUEST_SECONDS), plus how long a router may
    # run on a catalog snapshot that lags (SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS).
    max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS
    price_lag_seconds: int = DEFAULT_PRICE_LAG_SECONDS
    # How long a catalog change may take to reach metering while it watches the catalog.
    price_settle_seconds: float = DEFAULT_PRICE_SETTLE_SECONDS
    # Postgres connect and statement timeouts (SWITCHBOARD_DB_*_TIMEOUT_SECONDS): the bound
    # of every query that sets none of its own, the ledger's batch writes included.
    database_timeouts: DatabaseTimeouts = field(default_factory=DatabaseTimeouts)
    # The longest key verification (VerifyApiKey, VerifyOperatorKey) waits on Postgres
    # before answering UNAVAILABLE: under the routers' SWITCHBOARD_KEY_VERIFY_TIMEOUT_SECONDS.
    key_verify_db_seconds: float = DEFAULT_KEY_VERIFY_DB_SECONDS
    # OpenTelemetry traces (the standard OTEL_* variables; off without an endpoint).
    tracing: TracingConfig = field(default_factory=TracingConfig)

    @property
    def price_lag(self) -> float:
        """Seconds before an event's create_time whose prices its cost may be."""
        return self.max_request_seconds + self.price_lag_seconds

    @property
    def retention(self) -> timedelta | None:
        return timedelta(days=self.retention_days) if self.retention_days else None

    @property
    def event_window(self) -> EventWindow:
        """The ``create_time`` window of the usage events the ledger accepts."""
        return EventWindow(
            max_age=timedelta(days=self.max_event_age_days),
            max_skew=timedelta(seconds=self.max_clock_skew_seconds),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MeteringConfig:
        reader = EnvReader(env)
        server = ServerConfig.read(reader, SERVICE, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)
        database_url = read_database_url(reader)
        database_timeouts = DatabaseTimeouts.read(reader)
        key_verify_db_seconds = reader.float(
            "SWITCHBOARD_KEY_VERIFY_DB_SECONDS", DEFAULT_KEY_VERIFY_DB_SECONDS, min_value=0.05
        )
        redis_url = read_redis_url(reader)
        redis_cluster = read_redis_cluster(reader)
        outbox = OutboxSettings(
            stream=read_usage_stream(reader, DEFAULT_USAGE_STREAM),
            group=reader.str("SWITCHBOARD_USAGE_GROUP", DEFAULT_USAGE_GROUP),
        )
        budget_prefix = reader.str("SWITCHBOARD_BUDGET_PREFIX", DEFAULT_PREFIX)
        retention_days = reader.int(
            "SWITCHBOARD_LEDGER_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, max_value=36_500
        )
        max_event_age_days = reader.int(
            "SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS",
            DEFAULT_MAX_EVENT_AGE_DAYS,
            min_value=1,
            max_value=36_500,
        )
        max_clock_skew_seconds = reader.int(
            "SWITCHBOARD_LEDGER_MAX_CLOCK_SKEW_SECONDS",
            DEFAULT_MAX_CLOCK_SKEW_SECONDS,
            max_value=86_400,
        )
        sweep_seconds = reader.float(
            "SWITCHBOARD_ROUTER_SWEEP_SECONDS", DEFAULT_SWEEP_SECONDS, min_value=0.05
        )
        heartbeat_ttl_seconds = read_heartbeat_ttl(reader)
        catalog_addr = reader.address("SWITCHBOARD_CATALOG_ADDR", DEFAULT_CATALOG_ADDR)
        catalog_wait_seconds = reader.float("SWITCHBOARD_CATALOG_WAIT_SECONDS", 10.0)
        max_request_seconds = reader.float(
            "SWITCHBOARD_MAX_REQUEST_SECONDS", DEFAULT_MAX_REQUEST_SECONDS, min_value=1
        )
        price_lag_seconds = reader.int(
            "SWITCHBOARD_LEDGER_PRICE_LAG_SECONDS", DEFAULT_PRICE_LAG_SECONDS, max_value=86_400 * 31
        )
        price_settle_seconds = reader.float(
            "SWITCHBOARD_LEDGER_PRICE_SETTLE_SECONDS", DEFAULT_PRICE_SETTLE_SECONDS, min_value=0.1
        )
        tracing = TracingConfig.read(reader)
        reader.finish()
        return cls(
            server=server,
            tracing=tracing,
            database_url=database_url,
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            outbox=outbox,
            budget_prefix=budget_prefix,
            retention_days=retention_days,
            max_event_age_days=max_event_age_days,
            max_clock_skew_seconds=max_clock_skew_seconds,
            sweep_seconds=sweep_seconds,
            heartbeat_ttl_seconds=heartbeat_ttl_seconds,
            catalog_addr=catalog_addr,
            catalog_wait_seconds=catalog_wait_seconds,
            max_request_seconds=max_request_seconds,
            price_lag_seconds=price_lag_seconds,
            price_settle_seconds=price_settle_seconds,
            database_timeouts=database_timeouts,
            key_verify_db_seconds=key_verify_db_seconds,
        )
