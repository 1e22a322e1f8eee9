"""Validation of catalog entries, with violations named by their proto field paths.

Each ``*_violations`` function returns ``(field path, why)`` pairs under a caller-chosen prefix
(``"provider"`` for an RPC, ``"providers[3]"`` for a seed entry); an empty list means valid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_core.catalog_ids import QUANTIZATION
from switchboard_core.catalog_ids import model_id_problem as model_id_problem
from switchboard_core.catalog_ids import provider_id_problem as provider_id_problem
from switchboard_core.hedging import hedging_violations
from switchboard_core.money import MoneyFormatError, parse_usd
from switchboard_core.pricing import ALL_RATES, FEES, HH_MM, PriceSheet, tier_problems
from switchboard_core.rate_limits import MAX_CONCURRENT, MAX_REQUESTS_PER_MINUTE
from switchboard_core.upstreams import STRICT, UpstreamPolicy
from switchboard_core.usage_bounds import MAX_USD_PER_TOKEN

Violations = list[tuple[str, str]]

_MODALITY = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_PARAMETER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_NAME_MAX = 200
_DESCRIPTION_MAX = 4000
_URL_MAX = 2048
_UPSTREAM_MODEL_MAX = 256
_CONTEXT_MAX = 100_000_000
# Prices in USD per million tokens have at most 6 decimal places: a whole number of
# pico-dollars (1e-12 USD) a token, as budgets count in Redis and costs are written exactly.
PRICE_QUANTUM = Decimal("0.000001")
# Fees (per request, image, search) are USD each, kept to the ledger's 12 places.
FEE_QUANTUM = Decimal("0.000000000001")
_REQUIRED_RATES = ("prompt_usd_per_mtok", "completion_usd_per_mtok")
# The dearest price a token may have: the ledger's bound (switchboard_core.usage_bounds).
MAX_USD_PER_MTOK = MAX_USD_PER_TOKEN * 1_000_000
# Endpoint.scheduled_prices: at most this many, each at least a little in the future when
# written (a writer's clock may be this far behind the catalog's; a price already due is
# applied by the write itself: switchboard_catalog.store).
MAX_SCHEDULED_PRICES = 16
# A price's tiers and windows: far more than any provider publishes (genai-prices' most: 3
# tiers, 2 windows), and each generation's price walks them.
MAX_TIERS = 16
MAX_WINDOWS = 24
SCHEDULE_CLOCK_SKEW = timedelta(minutes=5)
# StallLimits, in milliseconds when set (0 inherits): below 100 ms a healthy stream would be
# cut between two tokens; above an hour it is no limit (migration 0007 checks the same).
MIN_STALL_MS = 100
MAX_STALL_MS = 3_600_000
# EndpointCapacity: the same ceilings as a key's or an account's rate limits
# (switchboard_core.rate_limits; migration 0008 checks the same).
MAX_ENDPOINT_CONCURRENT = MAX_CONCURRENT
MAX_ENDPOINT_REQUESTS_PER_MINUTE = MAX_REQUESTS_PER_MINUTE


def endpoint_id(provider_id: str, model_id: str) -> str:
    return f"{provider_id}:{model_id}"


def normalized_endpoint(endpoint: catalog_pb2.Endpoint) -> catalog_pb2.Endpoint:
    """A copy with the id filled in and an unspecified status made ACTIVE."""
    out = catalog_pb2.Endpoint()
    out.CopyFrom(endpoint)
    out.id = endpoint_id(endpoint.provider_id, endpoint.model_id)
    if out.status == catalog_pb2.ENDPOINT_STATUS_UNSPECIFIED:
        out.status = catalog_pb2.ENDPOINT_STATUS_ACTIVE
    return out


def provider_violations(
    provider: catalog_pb2.Provider, prefix: str, *, policy: UpstreamPolicy = STRICT
) -> Violations:
    """``base_url`` must pass the upstream address ``policy`` (the catalog's allow-list), so
    a catalog write cannot point a provider, and its credential, at an internal address."""
    out: Violations = []
    _check(out, f"{prefix}.id", provider_id_problem(provider.id))
    _check(out, f"{prefix}.display_name", _name_problem(provider.display_name))
    if provider.api_format not in catalog_pb2.ApiFormat.values() or (
        provider.api_format == catalog_pb2.API_FORMAT_UNSPECIFIED
    ):
        out.append((f"{prefix}.api_format", "must be a known ApiFormat, not UNSPECIFIED"))
    _check(out, f"{prefix}.base_url", _url_problem(provider.base_url, policy))
    if provider.dialect and provider_id_problem(provider.dialect):
        out.append((f"{prefix}.dialect", "must be empty or a slug like 'vllm'"))
    return out


def model_violations(model: catalog_pb2.Model, prefix: str) -> Violations:
    out: Violations = []
    _check(out, f"{prefix}.id", model_id_problem(model.id))
    _check(out, f"{prefix}.display_name", _name_problem(model.display_name))
    if len(model.description) > _DESCRIPTION_MAX:
        out.append((f"{prefix}.description", f"at most {_DESCRIPTION_MAX} characters"))
    _check(out, f"{prefix}.context_length", _context_problem(model.context_length))
    for name, values in (
        ("input_modalities", model.input_modalities),
        ("output_modalities", model.output_modalities),
    ):
        if not values:
            out.append((f"{prefix}.{name}", "at least one, e.g. 'text'"))
        out.extend(_list_violations(f"{prefix}.{name}", values, _MODALITY, "a modality"))
    out.extend(lifecycle_violations(model, prefix))
    out.extend(stall_violations(model.stall_limits, f"{prefix}.stall_limits"))
    out.extend(hedging_violations(model.hedge, f"{prefix}.hedge"))
    if model.successor_model_id:
        problem = model_id_problem(model.successor_model_id)
        if problem:
            out.append((f"{prefix}.successor_model_id", problem))
        elif model.successor_model_id == model.id:
            out.append((f"{prefix}.successor_model_id", "must name another model, not itself"))
    return out


def endpoint_violations(
    endpoint: catalog_pb2.Endpoint, prefix: str, *, now: datetime | None = None
) -> Violations:
    """Checks every field; an empty ``id`` is allowed (it is filled from the two ids).
    ``now``: scheduled prices must be later (:data:`SCHEDULE_CLOCK_SKEW` allowed); None
    accepts past ones (the seed: the store applies those that are due)."""
    out: Violations = []
    _check(out, f"{prefix}.model_id", model_id_problem(endpoint.model_id))
    _check(out, f"{prefix}.provider_id", provider_id_problem(endpoint.provider_id))
    expected = endpoint_id(endpoint.provider_id, endpoint.model_id)
    if endpoint.id and endpoint.id != expected:
        out.append((f"{prefix}.id", f"must be '<provider_id>:<model_id>' ({expected!r}) or empty"))
    if not endpoint.upstream_model.strip():
        out.append((f"{prefix}.upstream_model", "required"))
    elif len(endpoint.upstream_model) > _UPSTREAM_MODEL_MAX:
        out.append((f"{prefix}.upstream_model", f"at most {_UPSTREAM_MODEL_MAX} characters"))
    out.extend(pricing_violations(endpoint.pricing, f"{prefix}.pricing"))
    _check(out, f"{prefix}.context_length", _context_problem(endpoint.context_length))
    if endpoint.max_completion_tokens < 0:
        out.append((f"{prefix}.max_completion_tokens", "must not be negative (0 means no limit)"))
    elif 0 < endpoint.context_length < endpoint.max_completion_tokens:
        out.append((f"{prefix}.max_completion_tokens", "must not exceed context_length"))
    out.extend(
        _list_violations(
            f"{prefix}.supported_parameters",
            endpoint.supported_parameters,
            _PARAMETER,
            "a parameter name",
        )
    )
    if endpoint.quantization and not QUANTIZATION.fullmatch(endpoint.quantization):
        out.append((f"{prefix}.quantization", "lower case, e.g. 'fp8' or 'bf16', or empty"))
    if endpoint.status not in catalog_pb2.EndpointStatus.values():
        out.append((f"{prefix}.status", "must be a known EndpointStatus"))
    out.extend(lifecycle_violations(endpoint, prefix))
    out.extend(stall_violations(endpoint.stall_limits, f"{prefix}.stall_limits"))
    out.extend(capacity_violations(endpoint.capacity, f"{prefix}.capacity"))
    if endpoint.data_policy.retains_prompts and endpoint.data_policy.zero_data_retention:
        out.append(
            (
                f"{prefix}.data_policy.zero_data_retention",
                "a zero-data-retention endpoint keeps nothing: retains_prompts must be false",
            )
        )
    out.extend(scheduled_violations(endpoint.scheduled_prices, f"{prefix}.scheduled_prices", now))
    return out


def scheduled_violations(
    changes: Sequence[catalog_pb2.PriceChange], prefix: str, now: datetime | None
) -> Violations:
    """At most :data:`MAX_SCHEDULED_PRICES`, times strictly increasing (and after ``now``
    less the skew, when given), each pricing valid like an endpoint's. ``price_version`` is
    ignored (the catalog assigns one when the price takes effect)."""
    if len(changes) > MAX_SCHEDULED_PRICES:
        return [(prefix, f"at most {MAX_SCHEDULED_PRICES} scheduled prices")]
    out: Violations = []
    previous: datetime | None = None
    for i, change in enumerate(changes):
        where = f"{prefix}[{i}]"
        out.extend(pricing_violations(change.pricing, f"{where}.pricing"))
        if not change.HasField("effective_time"):
            out.append((f"{where}.effective_time", "required: when the price takes effect"))
            continue
        try:
            at = change.effective_time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            out.append((f"{where}.effective_time", "not a valid time"))
            continue
        if previous is not None and at <= previous:
            out.append((f"{where}.effective_time", "must be later than the one before"))
        elif now is not None and at <= now - SCHEDULE_CLOCK_SKEW:
            out.append(
                (
                    f"{where}.effective_time",
                    f"must be in the future (it is {now:%Y-%m-%dT%H:%M:%SZ})",
                )
            )
        previous = at
    return out


def pricing_violations(pricing: common_pb2.Pricing, prefix: str) -> Violations:
    """Every rate a non-negative decimal (token rates: at most 6 places and the ledger's
    bound; fees: at most 12 places), the prompt and completion rates required, at most
    :data:`MAX_TIERS` tiers and :data:`MAX_WINDOWS` windows, well formed
    (:func:`switchboard_core.pricing.tier_problems`)."""
    out = _rate_violations(pricing, prefix, required=True)
    if len(pricing.tiers) > MAX_TIERS:
        return [*out, (f"{prefix}.tiers", f"at most {MAX_TIERS} tiers")]
    if len(pricing.windows) > MAX_WINDOWS:
        return [*out, (f"{prefix}.windows", f"at most {MAX_WINDOWS} windows")]
    for i, tier in enumerate(pricing.tiers):
        where = f"{prefix}.tiers[{i}]"
        if tier.prompt_tokens_above < 0:
            out.append((f"{where}.prompt_tokens_above", "must not be negative"))
        out.extend(_nested_violations(tier.pricing, f"{where}.pricing"))
    for i, window in enumerate(pricing.windows):
        where = f"{prefix}.windows[{i}]"
        for name in ("start_utc", "end_utc"):
            if not HH_MM.fullmatch(getattr(window, name)):
                out.append((f"{where}.{name}", "a UTC time of day 'HH:MM', e.g. '16:30'"))
        out.extend(_nested_violations(window.pricing, f"{where}.pricing"))
    if out:
        return out
    try:
        sheet = PriceSheet.from_proto(pricing)
    except ValueError as error:  # every field was checked above; kept as a safety net
        return [(prefix, str(error))]
    return [(f"{prefix}.{field}", why) for field, why in tier_problems(sheet)]


def _nested_violations(pricing: common_pb2.Pricing, prefix: str) -> Violations:
    out = _rate_violations(pricing, prefix, required=False)
    if pricing.tiers:
        out.append((f"{prefix}.tiers", "a tier or window has no tiers of its own"))
    if pricing.windows:
        out.append((f"{prefix}.windows", "a tier or window has no windows of its own"))
    return out


def _rate_violations(pricing: common_pb2.Pricing, prefix: str, *, required: bool) -> Violations:
    out: Violations = []
    for name in ALL_RATES.values():
        text: str = getattr(pricing, name)
        if not text:
            if required and name in _REQUIRED_RATES:
                out.append((f"{prefix}.{name}", "required, a decimal string such as '0.15'"))
            continue
        try:
            price = parse_usd(text)
        except MoneyFormatError as error:
            out.append((f"{prefix}.{name}", str(error)))
            continue
        if name in FEES.values():
            if price != price.quantize(FEE_QUANTUM):
                out.append((f"{prefix}.{name}", "at most 12 decimal places (USD each)"))
        elif price != price.quantize(PRICE_QUANTUM):
            out.append(
                (
                    f"{prefix}.{name}",
                    "at most 6 decimal places: a price is a whole number of pico-dollars a"
                    " token, so every cost is exact to 12 decimal places",
                )
            )
        elif price > MAX_USD_PER_MTOK:
            out.append(
                (
                    f"{prefix}.{name}",
                    f"at most {MAX_USD_PER_MTOK} USD per million tokens (the ledger refuses"
                    " generations dearer than that per token)",
                )
            )
    return out


def stall_violations(limits: catalog_pb2.StallLimits, prefix: str) -> Violations:
    """Each limit 0 (inherit) or from :data:`MIN_STALL_MS` to :data:`MAX_STALL_MS`."""
    out: Violations = []
    for name in ("first_byte_ms", "idle_ms"):
        value: int = getattr(limits, name)
        if value and not MIN_STALL_MS <= value <= MAX_STALL_MS:
            out.append(
                (
                    f"{prefix}.{name}",
                    f"0 (inherit) or from {MIN_STALL_MS} to {MAX_STALL_MS} milliseconds (an hour)",
                )
            )
    return out


def capacity_violations(capacity: catalog_pb2.EndpointCapacity, prefix: str) -> Violations:
    """Each cap 0 (none) or at most its ceiling. ``Endpoint.stats`` is not checked: it is
    output only, and a write ignores it."""
    out: Violations = []
    for name, ceiling in (
        ("max_concurrent", MAX_ENDPOINT_CONCURRENT),
        ("requests_per_minute", MAX_ENDPOINT_REQUESTS_PER_MINUTE),
    ):
        if getattr(capacity, name) > ceiling:
            out.append((f"{prefix}.{name}", f"at most {ceiling:,} (0: no cap)"))
    return out


def lifecycle_violations(
    message: catalog_pb2.Model | catalog_pb2.Endpoint, prefix: str
) -> Violations:
    """Retirement not before deprecation (either may be unset: not announced)."""
    if (
        message.HasField("deprecation_time")
        and message.HasField("retirement_time")
        and message.retirement_time.ToDatetime() < message.deprecation_time.ToDatetime()
    ):
        return [(f"{prefix}.retirement_time", "must not be before deprecation_time")]
    return []


def _check(out: Violations, path: str, problem: str | None) -> None:
    if problem is not None:
        out.append((path, problem))


def _name_problem(value: str) -> str | None:
    if not value.strip():
        return "required"
    if len(value) > _NAME_MAX:
        return f"at most {_NAME_MAX} characters"
    return None


def _url_problem(value: str, policy: UpstreamPolicy) -> str | None:
    if not value:
        return "required"
    if len(value) > _URL_MAX:
        return f"at most {_URL_MAX} characters"
    problem = policy.base_url_problem(value)
    if problem is not None:
        return problem
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _context_problem(value: int) -> str | None:
    if value <= 0:
        return "must be positive"
    if value > _CONTEXT_MAX:
        return f"at most {_CONTEXT_MAX}"
    return None


def _list_violations(
    path: str, values: Sequence[str], pattern: re.Pattern[str], what: str
) -> Violations:
    out: Violations = []
    seen: set[str] = set()
    for index, value in enumerate(values):
        if not pattern.fullmatch(value):
            out.append((f"{path}[{index}]", f"not {what}: must match {pattern.pattern}"))
        elif value in seen:
            out.append((f"{path}[{index}]", f"duplicate {value!r}"))
        seen.add(value)
    return out
