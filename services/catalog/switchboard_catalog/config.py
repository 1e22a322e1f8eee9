"""The catalog's configuration, read once from the environment (docs/CONFIGURATION.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from switchboard_core.config import EnvReader, ServerConfig, read_database_url
from switchboard_core.db import DatabaseTimeouts
from switchboard_core.tracing_config import TracingConfig
from switchboard_core.upstreams import UpstreamPolicy, read_upstream_policy
from switchboard_core.usage_bounds import DEFAULT_MAX_EVENT_AGE_DAYS

SERVICE = "catalog"
DEFAULT_GRPC_PORT = 50052
DEFAULT_METRICS_PORT = 9092
DEFAULT_DEMO_BASE_URL = "http://127.0.0.1:8088/v1"
DEFAULT_METERING_ADDR = "127.0.0.1:50053"
SEED_NONE = "none"
# What SWITCHBOARD_CATALOG_IMPORT may name (switchboard_catalog.importer_source.SOURCES).
IMPORT_SOURCES = frozenset({"genai-prices"})


def packaged_seed_path() -> Path:
    """The seed file shipped with the package."""
    return Path(str(resources.files("switchboard_catalog") / "data" / "seed.json"))


@dataclass(frozen=True)
class CatalogConfig:
    server: ServerConfig
    # May hold a password: kept out of ``repr``.
    database_url: str = field(repr=False)
    # ``None`` skips seeding (``SWITCHBOARD_CATALOG_SEED=none``).
    seed_path: Path | None
    demo_base_url: str = field(default=DEFAULT_DEMO_BASE_URL, repr=False)  # may hold a password
    # How often the version is polled in case a notification was missed.
    version_poll_seconds: float = 5.0
    # Metering checks the operator keys of admin calls.
    metering_addr: str = DEFAULT_METERING_ADDR
    # Where providers' base URLs may point (SWITCHBOARD_UPSTREAM_ALLOWLIST, default empty:
    # public https hosts only). The demo upstream's host must be on it for the seed to load.
    upstream_policy: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    # How far back the price history sent to metering reaches: the ledger's oldest accepted
    # event (SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS, read by metering too).
    price_history_days: int = DEFAULT_MAX_EVENT_AGE_DAYS
    # A source to import at start, after the seed (SWITCHBOARD_CATALOG_IMPORT=genai-prices;
    # empty: none). See switchboard_catalog.importer.
    import_source: str = ""
    # The longest the price scheduler sleeps between looks at the schedule (it wakes at the
    # next scheduled time when sooner): a schedule another replica wrote is seen within it.
    schedule_max_wait_seconds: float = 60.0
    # Postgres connect and statement timeouts (SWITCHBOARD_DB_*_TIMEOUT_SECONDS).
    database_timeouts: DatabaseTimeouts = field(default_factory=DatabaseTimeouts)
    # OpenTelemetry traces (the standard OTEL_* variables; off without an endpoint).
    tracing: TracingConfig = field(default_factory=TracingConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CatalogConfig:
        reader = EnvReader(env)
        server = ServerConfig.read(reader, SERVICE, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT)
        database_url = read_database_url(reader)
        database_timeouts = DatabaseTimeouts.read(reader)
        seed_path = _read_seed_path(reader)
        demo_base_url = reader.url(
            "SWITCHBOARD_DEMO_BASE_URL", ("http", "https"), DEFAULT_DEMO_BASE_URL
        )
        upstream_policy = read_upstream_policy(reader)
        metering_addr = reader.address("SWITCHBOARD_METERING_ADDR", DEFAULT_METERING_ADDR)
        price_history_days = reader.int(
            "SWITCHBOARD_LEDGER_MAX_EVENT_AGE_DAYS",
            DEFAULT_MAX_EVENT_AGE_DAYS,
            min_value=1,
            max_value=36_500,
        )
        import_source = reader.str("SWITCHBOARD_CATALOG_IMPORT", "")
        if import_source and import_source not in IMPORT_SOURCES:
            reader.problems.append(
                f"SWITCHBOARD_CATALOG_IMPORT: {import_source!r} is not a source"
                f" (one of: {', '.join(sorted(IMPORT_SOURCES))}; or empty)"
            )
        tracing = TracingConfig.read(reader)
        reader.finish()
        return cls(
            server=server,
            tracing=tracing,
            database_url=database_url,
            seed_path=seed_path,
            demo_base_url=demo_base_url,
            upstream_policy=upstream_policy,
            metering_addr=metering_addr,
            price_history_days=price_history_days,
            import_source=import_source,
            database_timeouts=database_timeouts,
        )


def _read_seed_path(reader: EnvReader) -> Path | None:
    raw = reader.str("SWITCHBOARD_CATALOG_SEED", "")
    if raw.lower() == SEED_NONE:
        return None
    if not raw:
        return packaged_seed_path()
    path = Path(raw)
    if not path.is_file():
        reader.problems.append(
            f"SWITCHBOARD_CATALOG_SEED: no file at {raw!r} (a seed JSON path, or 'none')"
        )
    return path
