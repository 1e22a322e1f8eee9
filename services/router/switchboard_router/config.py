"""Router configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from switchboard_core.budget import DEFAULT_PREFIX
from switchboard_core.config import (
    EnvReader,
    Secret,
    ServerConfig,
    read_port_or_off,
    read_redis_cluster,
    read_redis_url,
    read_usage_stream,
    read_usage_streams,
)
from switchboard_core.liveness import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_HEARTBEAT_TTL_SECONDS,
    read_heartbeat,
)
from switchboard_core.redis_client import DEFAULT_DEADLINE_SECONDS
from switchboard_core.tls import TlsConfig
from switchboard_core.tracing_config import TracingConfig
from switchboard_core.upstreams import UpstreamPolicy, parse_host_entry, read_upstream_policy
from switchboard_core.usage_outbox import DEFAULT_USAGE_STREAM

# Provider credentials: SWITCHBOARD_PROVIDER_KEY_<PROVIDER ID, "-" written "_">.
PROVIDER_KEY_PREFIX = "SWITCHBOARD_PROVIDER_KEY_"
# The hosts a provider's credential may be sent to, replacing the built-in ones
# (providers/credentials.py): SWITCHBOARD_PROVIDER_HOSTS_<PROVIDER ID>=host1,host2.
PROVIDER_HOSTS_PREFIX = "SWITCHBOARD_PROVIDER_HOSTS_"


@dataclass(frozen=True)
class RouterConfig:
    server: ServerConfig
    redis_url: str = field(repr=False)  # may hold a password
    catalog_addr: str
    metering_addr: str
    usage_stream: str = DEFAULT_USAGE_STREAM
    # The usage outbox split into this many streams (SWITCHBOARD_USAGE_STREAMS; 1: not split).
    usage_streams: int = 1
    # REDIS_URL names a node of a Redis Cluster (SWITCHBOARD_REDIS_CLUSTER).
    redis_cluster: bool = False
    key_cache_seconds: float = 30.0
    catalog_wait_seconds: float = 10.0
    max_request_seconds: float = 600.0
    provider_keys: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    # Provider (lower-cased, "-" written "_") -> declared hosts, from PROVIDER_HOSTS_PREFIX.
    provider_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Where requests may go (SWITCHBOARD_UPSTREAM_ALLOWLIST; switchboard_core.upstreams).
    upstream_policy: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    budget_prefix: str = DEFAULT_PREFIX
    # Completion tokens reserved when a request sets no max_tokens (and the endpoint's cap
    # is higher or unknown).
    reservation_ceiling_tokens: int = 4096
    # The router's heartbeat (switchboard_core.liveness): rewritten every heartbeat_seconds,
    # it expires heartbeat_ttl_seconds after the last one; metering then sweeps the router.
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    heartbeat_ttl_seconds: float = DEFAULT_HEARTBEAT_TTL_SECONDS
    # How the router calls catalog and metering (its own certificate); ``server.tls`` is how
    # it serves its public port.
    internal_tls: TlsConfig = field(default_factory=TlsConfig)
    # Bounded waits on dependencies (docs/RELIABILITY.md). The longest a request-path Redis
    # call (a reservation, the usage outbox) may take, retries included, before the router
    # treats Redis as unavailable.
    redis_timeout_seconds: float = DEFAULT_DEADLINE_SECONDS
    # The longest the usage write may wait on metering's RecordUsage when the outbox failed,
    # before the event goes to the local spool.
    usage_fallback_seconds: float = 0.5
    # Where usage events and settles that could not reach Redis or metering are kept until
    # they can ("" = the spool module's default).
    spool_dir: str = ""
    # How long a key metering verified before keeps serving while metering is unreachable.
    key_stale_seconds: float = 600.0
    # The longest a request waits on metering to verify a key it has never seen.
    key_verify_timeout_seconds: float = 0.8
    # Upstream stalls, unless the catalog sets them per endpoint or model: the longest wait
    # for a provider's first byte, and the longest silence between two reads after it.
    upstream_first_byte_seconds: float = 15.0
    upstream_idle_seconds: float = 30.0
    # The same for a request that asks the model to think (``reasoning``), which may be silent
    # for minutes before its first token; the catalog's limits still win.
    upstream_thinking_first_byte_seconds: float = 300.0
    upstream_thinking_idle_seconds: float = 120.0
    # Traffic control (docs/ROUTING.md, docs/LIMITS.md).
    # How long a request waits for an endpoint at its capacity cap when no other endpoint of
    # the plan can take it, before RESOURCE_EXHAUSTED.
    endpoint_queue_seconds: float = 2.0
    # A concurrency slot (key, account or endpoint) is a lease this long, renewed while the
    # request runs: a router that dies frees its slots within it.
    concurrency_lease_seconds: float = 30.0
    # Live endpoint statistics: the sliding window, how often this router adds its counts to
    # the shared ones in Redis, and how often it reads everyone's back.
    stats_window_seconds: float = 300.0
    stats_flush_seconds: float = 1.0
    stats_refresh_seconds: float = 2.0
    # Circuit breaker: opens when, over the last breaker_window_seconds, at least
    # breaker_min_requests attempts were made and breaker_failure_rate of them failed, or
    # after breaker_consecutive_failures failures in a row; stays open breaker_open_seconds,
    # then lets breaker_probes requests through (half-open) and closes on a success.
    breaker_window_seconds: float = 30.0
    breaker_min_requests: int = 10
    breaker_failure_rate: float = 0.5
    breaker_consecutive_failures: int = 5
    breaker_open_seconds: float = 30.0
    breaker_probes: int = 3
    # Hedging for requests and models that do not set it: "off", "fixed" (after
    # hedge_delay_seconds) or "live" (the endpoint's live TTFT at hedge_percentile, else
    # hedge_delay_seconds).
    hedge_mode: str = "off"
    hedge_delay_seconds: float = 2.0
    hedge_percentile: int = 90
    # Extra upstream requests (fallbacks after an error, hedges) allowed on top of first
    # attempts: retry_budget_ratio of them, plus retry_budget_min_per_second, over 10 s.
    retry_budget_ratio: float = 0.1
    retry_budget_min_per_second: float = 1.0
    # The HTTP edge's port (OpenAI- and Anthropic-compatible; switchboard_router.edge): None
    # when SWITCHBOARD_HTTP_PORT is "off", 0 for any free port. Served on the gRPC port's host
    # with its TLS settings.
    http_port: int | None = 8080
    # How long a streamed HTTP answer waits, without a byte, for its first event before it
    # begins with keep-alive lines (then one every as long): under the idle timeout of the
    # load balancers in front (switchboard_router.edge.keepalive).
    http_keepalive_seconds: float = 15.0
    # OpenTelemetry traces (the standard OTEL_* variables; off without an endpoint).
    tracing: TracingConfig = field(default_factory=TracingConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        reader = EnvReader(env)
        server = ServerConfig.read(reader, "router", 50051, 9091)
        heartbeat_seconds, heartbeat_ttl_seconds = read_heartbeat(reader)
        usage_stream = read_usage_stream(reader, DEFAULT_USAGE_STREAM)
        config = cls(
            server=replace(server, tls=server.tls.for_public_port(reader)),
            internal_tls=server.tls,
            redis_url=read_redis_url(reader),
            catalog_addr=reader.address("SWITCHBOARD_CATALOG_ADDR", "127.0.0.1:50052"),
            metering_addr=reader.address("SWITCHBOARD_METERING_ADDR", "127.0.0.1:50053"),
            usage_stream=usage_stream,
            usage_streams=read_usage_streams(reader, usage_stream),
            redis_cluster=read_redis_cluster(reader),
            key_cache_seconds=reader.float("SWITCHBOARD_KEY_CACHE_SECONDS", 30.0),
            catalog_wait_seconds=reader.float("SWITCHBOARD_CATALOG_WAIT_SECONDS", 10.0),
            max_request_seconds=reader.float("SWITCHBOARD_MAX_REQUEST_SECONDS", 600.0, min_value=1),
            provider_keys=reader.prefixed(PROVIDER_KEY_PREFIX),
            provider_hosts=read_provider_hosts(reader),
            upstream_policy=read_upstream_policy(reader),
            budget_prefix=reader.str("SWITCHBOARD_BUDGET_PREFIX", DEFAULT_PREFIX),
            reservation_ceiling_tokens=reader.int(
                "SWITCHBOARD_RESERVATION_CEILING_TOKENS", 4096, min_value=1
            ),
            heartbeat_seconds=heartbeat_seconds,
            heartbeat_ttl_seconds=heartbeat_ttl_seconds,
            redis_timeout_seconds=reader.float(
                "SWITCHBOARD_REDIS_TIMEOUT_SECONDS", DEFAULT_DEADLINE_SECONDS, min_value=0.05
            ),
            usage_fallback_seconds=reader.float(
                "SWITCHBOARD_USAGE_FALLBACK_SECONDS", 0.5, min_value=0.05
            ),
            spool_dir=reader.str("SWITCHBOARD_SPOOL_DIR", ""),
            key_stale_seconds=reader.float("SWITCHBOARD_KEY_STALE_SECONDS", 600.0, min_value=0),
            key_verify_timeout_seconds=reader.float(
                "SWITCHBOARD_KEY_VERIFY_TIMEOUT_SECONDS", 0.8, min_value=0.05
            ),
            upstream_first_byte_seconds=reader.float(
                "SWITCHBOARD_UPSTREAM_FIRST_BYTE_SECONDS", 15.0, min_value=0.1
            ),
            upstream_idle_seconds=reader.float(
                "SWITCHBOARD_UPSTREAM_IDLE_SECONDS", 30.0, min_value=0.1
            ),
            upstream_thinking_first_byte_seconds=reader.float(
                "SWITCHBOARD_UPSTREAM_THINKING_FIRST_BYTE_SECONDS", 300.0, min_value=0.1
            ),
            upstream_thinking_idle_seconds=reader.float(
                "SWITCHBOARD_UPSTREAM_THINKING_IDLE_SECONDS", 120.0, min_value=0.1
            ),
            endpoint_queue_seconds=reader.float(
                "SWITCHBOARD_ENDPOINT_QUEUE_SECONDS", 2.0, min_value=0
            ),
            concurrency_lease_seconds=reader.float(
                "SWITCHBOARD_CONCURRENCY_LEASE_SECONDS", 30.0, min_value=1
            ),
            stats_window_seconds=reader.float(
                "SWITCHBOARD_STATS_WINDOW_SECONDS", 300.0, min_value=10
            ),
            stats_flush_seconds=reader.float(
                "SWITCHBOARD_STATS_FLUSH_SECONDS", 1.0, min_value=0.05
            ),
            stats_refresh_seconds=reader.float(
                "SWITCHBOARD_STATS_REFRESH_SECONDS", 2.0, min_value=0.05
            ),
            breaker_window_seconds=reader.float(
                "SWITCHBOARD_BREAKER_WINDOW_SECONDS", 30.0, min_value=1
            ),
            breaker_min_requests=reader.int("SWITCHBOARD_BREAKER_MIN_REQUESTS", 10, min_value=1),
            breaker_failure_rate=reader.float(
                "SWITCHBOARD_BREAKER_FAILURE_RATE", 0.5, min_value=0.01
            ),
            breaker_consecutive_failures=reader.int(
                "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES", 5, min_value=1
            ),
            breaker_open_seconds=reader.float(
                "SWITCHBOARD_BREAKER_OPEN_SECONDS", 30.0, min_value=0.1
            ),
            breaker_probes=reader.int("SWITCHBOARD_BREAKER_PROBES", 3, min_value=1),
            hedge_mode=reader.str("SWITCHBOARD_HEDGE_MODE", "off"),
            hedge_delay_seconds=reader.float(
                "SWITCHBOARD_HEDGE_DELAY_SECONDS", 2.0, min_value=0.01
            ),
            hedge_percentile=reader.int("SWITCHBOARD_HEDGE_PERCENTILE", 90, min_value=50),
            retry_budget_ratio=reader.float("SWITCHBOARD_RETRY_BUDGET_RATIO", 0.1, min_value=0),
            retry_budget_min_per_second=reader.float(
                "SWITCHBOARD_RETRY_BUDGET_MIN_PER_SECOND", 1.0, min_value=0
            ),
            http_port=read_port_or_off(reader, "SWITCHBOARD_HTTP_PORT", 8080),
            http_keepalive_seconds=reader.float(
                "SWITCHBOARD_HTTP_KEEPALIVE_SECONDS", 15.0, min_value=0.05
            ),
            tracing=TracingConfig.read(reader),
        )
        if config.hedge_mode not in ("off", "fixed", "live"):
            reader.problems.append("SWITCHBOARD_HEDGE_MODE: one of off, fixed, live")
        if config.breaker_failure_rate > 1:
            reader.problems.append("SWITCHBOARD_BREAKER_FAILURE_RATE: at most 1")
        if config.hedge_percentile > 99:
            reader.problems.append("SWITCHBOARD_HEDGE_PERCENTILE: at most 99")
        reader.finish()
        return config


def read_provider_hosts(reader: EnvReader) -> dict[str, tuple[str, ...]]:
    hosts: dict[str, tuple[str, ...]] = {}
    for provider, entries in reader.prefixed_csv(PROVIDER_HOSTS_PREFIX).items():
        try:
            hosts[provider] = tuple(parse_host_entry(entry) for entry in entries)
        except ValueError as error:
            reader.problems.append(f"{PROVIDER_HOSTS_PREFIX}{provider.upper()}: {error}")
    return hosts
