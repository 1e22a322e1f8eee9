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
    "Router Redis calls that failed, by operation (reserve, settle, usage, replay, rate_check,"
    " rate_finish, lease_renew, endpoint_acquire, endpoint_release; stats_flush and"
    " stats_refresh in the background) and cause: deadline (cut at"
    " SWITCHBOARD_REDIS_TIMEOUT_SECONDS), error (refused or dropped) or known_down (failed at"
    " once: Redis failed moments before).",
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
RATE_LIMIT_CHECKS = Counter(
    "switchboard_router_rate_limit_checks_total",
    "Rate and concurrency checks in Redis (traffic.py, capacity.py), by scope (caller: a key's"
    " and its account's limits; endpoint: an endpoint's caps) and outcome: admitted, refused, or"
    " unavailable (Redis could not be asked in time: admitted anyway, the limits fail open).",
    ["scope", "outcome"],
)
RATE_LIMITED = Counter(
    "switchboard_router_rate_limited_total",
    "Requests (and endpoint attempts) refused by a limit, by the limit's name"
    " (key.requests_per_minute, account.max_concurrent, endpoint.max_concurrent...).",
    ["limit"],
)
for _scope in ("caller", "endpoint"):
    for _outcome in ("admitted", "refused", "unavailable"):
        RATE_LIMIT_CHECKS.labels(_scope, _outcome)  # export zeros before the first request
# Live endpoint statistics and circuit breakers (endpoint_stats.py, breaker.py). The endpoint
# label is the catalog's endpoint id: bounded by the catalog; series of endpoints without
# recent figures are removed.
ENDPOINT_TTFT = Gauge(
    "switchboard_router_endpoint_ttft_seconds",
    "An endpoint's time to first token over the statistics window, across every router, at a"
    " quantile (0.5, 0.9).",
    ["endpoint", "quantile"],
)
ENDPOINT_THROUGHPUT = Gauge(
    "switchboard_router_endpoint_throughput_tokens_per_second",
    "An endpoint's output tokens per second after the first token, over the statistics window,"
    " across every router, at a quantile (0.5).",
    ["endpoint", "quantile"],
)
ENDPOINT_UPTIME = Gauge(
    "switchboard_router_endpoint_uptime_ratio",
    "The share of an endpoint's attempts over the statistics window that did not fail on the"
    " provider's side (5xx, timeouts, stalls, connection errors, 429s), across every router.",
    ["endpoint"],
)
ENDPOINT_BREAKER_STATE = Gauge(
    "switchboard_router_endpoint_breaker_state",
    "An endpoint's circuit breaker as this router sees it: 0 closed, 1 half-open, 2 open.",
    ["endpoint"],
)
BREAKER_TRANSITIONS = Counter(
    "switchboard_router_breaker_transitions_total",
    "Circuit breaker state changes seen by this router, by endpoint, new state (open,"
    " half_open, closed) and cause (failure_rate, consecutive_failures, rate_limited,"
    " probe_failed, open_elapsed, probe_succeeded, shared: another router's change, expired:"
    " half-open without a verdict).",
    ["endpoint", "state", "cause"],
)
LIVE_STATS_DROPPED = Counter(
    "switchboard_router_live_stats_dropped_total",
    "Attempt outcomes not counted in the live endpoint statistics because the counts waiting"
    " for Redis reached their bound (Redis unreachable for long).",
)
# --- the attempt loop: hedging, retry budget, endpoint caps, breakers (attempts.py) ---------
HEDGES = Counter(
    "switchboard_router_hedges_total",
    "Hedged attempts sent: the attempt in flight had not produced its first event within the"
    " hedge delay, so the request went to the next endpoint too (by that endpoint's provider).",
    ["provider"],
)
HEDGE_RACES = Counter(
    "switchboard_router_hedge_races_total",
    "Races between two attempts in flight decided by a first event, by the winner: the hedge,"
    " or the attempt it hedged (primary).",
    ["winner"],
)
ABANDONED_ATTEMPTS = Counter(
    "switchboard_router_abandoned_attempts_total",
    "Attempts cancelled before they won and metered as their own attempt, by provider and"
    " cause: hedge_lost (another attempt answered first) or cancelled (the request ended during"
    " the race: the client left).",
    ["provider", "cause"],
)
RETRY_BUDGET_EXHAUSTED = Counter(
    "switchboard_router_retry_budget_exhausted_total",
    "Extra upstream attempts not made because this router's retry budget was empty, by kind:"
    " hedge (none started) or fallback (the request ended with its last error).",
    ["kind"],
)
ENDPOINT_SPILLS = Counter(
    "switchboard_router_endpoint_spills_total",
    "Endpoints passed over for the next one because they were at a capacity cap, by provider"
    " and cap (endpoint.max_concurrent, endpoint.requests_per_minute).",
    ["provider", "limit"],
)
ENDPOINT_QUEUE = Counter(
    "switchboard_router_endpoint_queue_total",
    "Requests that waited for a slot because every endpoint left was at a capacity cap, by"
    " result: served (an endpoint took it after the wait) or refused (ENDPOINT_AT_CAPACITY).",
    ["result"],
)
CIRCUIT_SKIPS = Counter(
    "switchboard_router_circuit_skips_total",
    "Endpoints skipped without a network call because their circuit breaker was open (or"
    " half-open with no probe left), by provider.",
    ["provider"],
)
for _kind in ("hedge", "fallback"):
    RETRY_BUDGET_EXHAUSTED.labels(_kind)
for _result in ("served", "refused"):
    ENDPOINT_QUEUE.labels(_result)
for _winner in ("hedge", "primary"):
    HEDGE_RACES.labels(_winner)
HTTP_EDGE_REQUESTS = Counter(
    "switchboard_router_http_requests_total",
    "Requests to the router's HTTP edge (OpenAI- and Anthropic-compatible), by route (the"
    " route's path, e.g. /v1/chat/completions) and code (the HTTP status sent; a stream that"
    " fails after it started counts as its 200).",
    ["route", "code"],
)
