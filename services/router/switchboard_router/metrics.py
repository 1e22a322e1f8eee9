"""Router metrics. Labels are bounded: provider ids and fixed enums only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GENERATIONS = Counter(
    "switchboard_router_generations_total",
    "Generations relayed, by provider and final status.",
    ["provider", "status"],
)
UPSTREAM_ERRORS = Counter(
    "switchboard_router_upstream_errors_total",
    "Failed upstream attempts, by provider and error reason.",
    ["provider", "reason"],
)
UPSTREAM_STALLS = Counter(
    "switchboard_router_upstream_stalls_total",
    "Upstream streams silent past a stall limit, by provider and phase: first_byte (no body"
    " yet; the request moved on to the next endpoint) or idle (silent after the body began).",
    ["provider", "phase"],
)
FALLBACKS = Counter(
    "switchboard_router_fallbacks_total",
    "Requests served by an endpoint other than the first planned one.",
)
TIME_TO_FIRST_TOKEN = Histogram(
    "switchboard_router_time_to_first_token_seconds",
    "From request start to the first upstream event.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
TOKENS = Counter(
    "switchboard_gen_ai_tokens_total",
    "Tokens metered (gen_ai.client.token.usage), by provider and token type.",
    ["provider", "token_type"],
)
USAGE_SINK_FALLBACKS = Counter(
    "switchboard_router_usage_sink_fallbacks_total",
    "Usage events sent straight to metering because the Redis outbox failed.",
)
BUDGET_ADMISSIONS = Counter(
    "switchboard_router_budget_admissions_total",
    "Requests of limited keys or prepaid accounts: admitted, refused (by window: total, daily,"
    " monthly, credit) or unavailable (Redis could not be asked).",
    ["result"],
)
BUDGET_SETTLE_FAILURES = Counter(
    "switchboard_router_budget_settle_failures_total",
    "Reservations that could not be settled (they expire; metering's resync restores spend).",
)
for _result in ("admitted", "total", "daily", "monthly", "credit", "unavailable"):
    BUDGET_ADMISSIONS.labels(_result)  # export zeros before the first request
REDIS_FAILURES = Counter(
    "switchboard_router_redis_failures_total",
    "Request-path Redis calls that failed, by operation (reserve, settle, usage, replay) and"
    " cause: deadline (cut at SWITCHBOARD_REDIS_TIMEOUT_SECONDS), error (refused or dropped)"
    " or known_down (failed at once: Redis failed moments before).",
    ["operation", "cause"],
)
SPOOL_WRITES = Counter(
    "switchboard_router_spool_writes_total",
    "Usage events and settles kept in the local spool because Redis (and, for usage,"
    " metering) could not take them, by kind (usage, settle).",
    ["kind"],
)
SPOOL_REPLAYS = Counter(
    "switchboard_router_spool_replays_total",
    "Spooled entries delivered and deleted from the spool, by kind (usage, settle).",
    ["kind"],
)
SPOOL_DEPTH = Gauge(
    "switchboard_router_spool_depth",
    "Entries waiting in the local spool (this process's view, updated as it writes and replays).",
)
for _kind in ("usage", "settle"):
    SPOOL_WRITES.labels(_kind)
    SPOOL_REPLAYS.labels(_kind)
USAGE_REPORTS_DISTRUSTED = Counter(
    "switchboard_router_usage_reports_distrusted_total",
    "Provider usage reports not taken as sent (usage_sanity.py), by provider and reason:"
    " negative, over_bound or exceeds_stream (replaced by the relay's estimate) or"
    " inconsistent_parts (parts clamped).",
    ["provider", "reason"],
)
DEPRECATED_REQUESTS = Counter(
    "switchboard_router_deprecated_requests_total",
    "Requests served by a deprecated model or endpoint (lifecycle.py), by the catalog's model id.",
    ["model"],
)
