"""Database rows to protos and back: enum names, prices, timestamps.

An endpoint's price is stored in two parts (migration 0004): the four classic rates in their
NUMERIC columns, and everything else of ``Pricing`` (other rates, tiers, windows) in the
``price_rules`` jsonb column, as the proto's JSON mapping written canonically
(:func:`price_rules_to_db`), so that equal prices are equal jsonb and the history trigger sees
a rewrite of the same price as no change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_core.money import format_usd, parse_usd
from switchboard_core.pricing import PriceSheet

Row = Mapping[str, Any]

_API_FORMAT_PREFIX = "API_FORMAT_"
_STATUS_PREFIX = "ENDPOINT_STATUS_"


def api_format_to_db(value: int) -> str:
    return catalog_pb2.ApiFormat.Name(value).removeprefix(_API_FORMAT_PREFIX).lower()  # type: ignore[arg-type]


def api_format_from_db(text: str) -> catalog_pb2.ApiFormat.ValueType:
    """Unknown names (written by a newer replica) read as UNSPECIFIED."""
    name = _API_FORMAT_PREFIX + text.upper()
    try:
        return catalog_pb2.ApiFormat.Value(name)
    except ValueError:
        return catalog_pb2.API_FORMAT_UNSPECIFIED


def status_to_db(value: int) -> str:
    if value == catalog_pb2.ENDPOINT_STATUS_UNSPECIFIED:
        value = catalog_pb2.ENDPOINT_STATUS_ACTIVE
    return catalog_pb2.EndpointStatus.Name(value).removeprefix(_STATUS_PREFIX).lower()  # type: ignore[arg-type]


def status_from_db(text: str) -> catalog_pb2.EndpointStatus.ValueType:
    name = _STATUS_PREFIX + text.upper()
    try:
        return catalog_pb2.EndpointStatus.Value(name)
    except ValueError:
        return catalog_pb2.ENDPOINT_STATUS_UNSPECIFIED


def price_to_db(text: str) -> Decimal | None:
    """An optional price: empty means NULL ("same as the prompt price")."""
    return parse_usd(text) if text else None


def price_from_db(value: Decimal | None) -> str:
    return "" if value is None else format_usd(value)


def provider_from_row(row: Row) -> catalog_pb2.Provider:
    return catalog_pb2.Provider(
        id=row["id"],
        display_name=row["display_name"],
        api_format=api_format_from_db(row["api_format"]),
        base_url=row["base_url"],
        dialect=row["dialect"],
    )


_CLASSIC_FIELDS = (
    "prompt_usd_per_mtok",
    "completion_usd_per_mtok",
    "cached_prompt_usd_per_mtok",
    "cache_write_usd_per_mtok",
)


def canonical_pricing(pricing: common_pb2.Pricing) -> common_pb2.Pricing:
    """``pricing`` with every rate in canonical form ("1.50" becomes "1.5"); it must be valid
    (:func:`switchboard_catalog.validate.pricing_violations`)."""
    return PriceSheet.from_proto(pricing).to_proto()


def price_rules_to_db(pricing: common_pb2.Pricing) -> str:
    """The ``price_rules`` jsonb text: the canonical price without its four classic rates."""
    rules = canonical_pricing(pricing)
    for name in _CLASSIC_FIELDS:
        rules.ClearField(name)  # type: ignore[arg-type]
    return json.dumps(
        json_format.MessageToDict(rules, preserving_proto_field_name=True), sort_keys=True
    )


def pricing_from_row(row: Row) -> common_pb2.Pricing:
    """The price columns (of ``endpoints`` or ``endpoint_prices``): the four classic rates
    and the ``price_rules`` beside them."""
    pricing = common_pb2.Pricing()
    rules = row["price_rules"]
    if rules:
        json_format.ParseDict(json.loads(rules) if isinstance(rules, str) else rules, pricing)
    pricing.prompt_usd_per_mtok = format_usd(row["prompt_price"])
    pricing.completion_usd_per_mtok = format_usd(row["completion_price"])
    pricing.cached_prompt_usd_per_mtok = price_from_db(row["cached_prompt_price"])
    pricing.cache_write_usd_per_mtok = price_from_db(row["cache_write_price"])
    return pricing


PriceColumns = tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None, str]


def price_columns(pricing: common_pb2.Pricing) -> PriceColumns:
    """The price columns of ``endpoints`` (and ``endpoint_scheduled_prices``) for a valid
    ``pricing``: prompt, completion, cached prompt, cache write and the ``price_rules`` text."""
    return (
        price_to_db(pricing.prompt_usd_per_mtok),
        price_to_db(pricing.completion_usd_per_mtok),
        price_to_db(pricing.cached_prompt_usd_per_mtok),
        price_to_db(pricing.cache_write_usd_per_mtok),
        price_rules_to_db(pricing),
    )


def scheduled_key(effective_at: datetime, pricing: common_pb2.Pricing) -> tuple[Any, ...]:
    """What makes two scheduled prices the same (equal decimals, equal rules), so that
    rewriting a schedule unchanged is no change."""
    *rates, rules = price_columns(pricing)
    return (effective_at, *rates, json.loads(rules))


def scheduled_key_of_row(row: Row) -> tuple[Any, ...]:
    return scheduled_key(row["effective_at"], pricing_from_row(row))


def time_to_db(message: Any, field: str) -> datetime | None:
    """A Timestamp field as a UTC datetime; None (NULL) when unset."""
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def stall_limits_from_row(row: Row) -> catalog_pb2.StallLimits | None:
    """The row's stall limits (migration 0007); None (unset) when both inherit."""
    if not row["first_byte_ms"] and not row["idle_ms"]:
        return None
    return catalog_pb2.StallLimits(first_byte_ms=row["first_byte_ms"], idle_ms=row["idle_ms"])


def capacity_from_row(row: Row) -> catalog_pb2.EndpointCapacity | None:
    """The endpoint's caps (migration 0008); None (unset) when it has none."""
    if not row["max_concurrent"] and not row["requests_per_minute"]:
        return None
    return catalog_pb2.EndpointCapacity(
        max_concurrent=row["max_concurrent"], requests_per_minute=row["requests_per_minute"]
    )


def data_policy_from_row(row: Row) -> catalog_pb2.DataPolicy | None:
    """The endpoint's data policy (migration 0008); None (unset) when nothing is known."""
    if not row["retains_prompts"] and not row["zero_data_retention"]:
        return None
    return catalog_pb2.DataPolicy(
        retains_prompts=row["retains_prompts"], zero_data_retention=row["zero_data_retention"]
    )


_HEDGE_PREFIX = "MODE_"


def hedge_columns(hedge: common_pb2.Hedging) -> tuple[str, int, int]:
    """A valid ``Hedging`` as the ``models`` columns: the mode's lower-case name ('' for
    unspecified: inherit), the delay and the percentile."""
    mode = ""
    if hedge.mode != common_pb2.Hedging.MODE_UNSPECIFIED:
        mode = common_pb2.Hedging.Mode.Name(hedge.mode).removeprefix(_HEDGE_PREFIX).lower()
    return mode, hedge.delay_ms, hedge.ttft_percentile


def hedge_from_row(row: Row) -> common_pb2.Hedging | None:
    """The model's hedging (migration 0008); None (unset: inherit) when its mode is ''. A mode
    a newer replica wrote and this one does not know reads as unset."""
    if not row["hedge_mode"]:
        return None
    try:
        mode = common_pb2.Hedging.Mode.Value(_HEDGE_PREFIX + row["hedge_mode"].upper())
    except ValueError:
        return None
    return common_pb2.Hedging(
        mode=mode, delay_ms=row["hedge_delay_ms"], ttft_percentile=row["hedge_ttft_percentile"]
    )


def endpoint_from_row(
    row: Row, scheduled: Iterable[catalog_pb2.PriceChange] = ()
) -> catalog_pb2.Endpoint:
    return catalog_pb2.Endpoint(
        scheduled_prices=scheduled,
        id=row["id"],
        model_id=row["model_id"],
        provider_id=row["provider_id"],
        upstream_model=row["upstream_model"],
        pricing=pricing_from_row(row),
        context_length=row["context_length"],
        max_completion_tokens=row["max_completion_tokens"],
        supported_parameters=row["supported_parameters"],
        quantization=row["quantization"],
        status=status_from_db(row["status"]),
        price_version=row["price_version"] or 0,
        deprecation_time=_timestamp(row["deprecation_at"]),
        retirement_time=_timestamp(row["retirement_at"]),
        stall_limits=stall_limits_from_row(row),
        capacity=capacity_from_row(row),
        data_policy=data_policy_from_row(row),
    )


def model_from_row(row: Row, endpoints: Iterable[catalog_pb2.Endpoint]) -> catalog_pb2.Model:
    update_time = timestamp_pb2.Timestamp()
    update_time.FromDatetime(row["updated_at"])
    return catalog_pb2.Model(
        id=row["id"],
        display_name=row["display_name"],
        description=row["description"],
        context_length=row["context_length"],
        input_modalities=row["input_modalities"],
        output_modalities=row["output_modalities"],
        endpoints=endpoints,
        update_time=update_time,
        deprecation_time=_timestamp(row["deprecation_at"]),
        retirement_time=_timestamp(row["retirement_at"]),
        successor_model_id=row["successor_model_id"],
        stall_limits=stall_limits_from_row(row),
        hedge=hedge_from_row(row),
    )


def scheduled_from_rows(rows: Iterable[Row]) -> dict[str, list[catalog_pb2.PriceChange]]:
    """``endpoint_scheduled_prices`` rows (ordered by time) by endpoint id."""
    out: dict[str, list[catalog_pb2.PriceChange]] = {}
    for row in rows:
        change = catalog_pb2.PriceChange(pricing=pricing_from_row(row))
        change.effective_time.FromDatetime(row["effective_at"])
        out.setdefault(row["endpoint_id"], []).append(change)
    return out


def models_from_rows(
    model_rows: Iterable[Row], endpoint_rows: Iterable[Row], scheduled_rows: Iterable[Row] = ()
) -> list[catalog_pb2.Model]:
    """Joins endpoints (in their row order) to their models (in theirs), and scheduled
    prices to their endpoints."""
    scheduled = scheduled_from_rows(scheduled_rows)
    by_model: dict[str, list[catalog_pb2.Endpoint]] = {}
    for row in endpoint_rows:
        endpoint = endpoint_from_row(row, scheduled.get(row["id"], ()))
        by_model.setdefault(row["model_id"], []).append(endpoint)
    return [model_from_row(row, by_model.get(row["id"], ())) for row in model_rows]


def price_history_from_rows(rows: Iterable[Row]) -> list[catalog_pb2.EndpointPriceHistory]:
    """``endpoint_prices`` rows, ordered by endpoint then time, grouped by endpoint."""
    histories: list[catalog_pb2.EndpointPriceHistory] = []
    for row in rows:
        if not histories or histories[-1].endpoint_id != row["endpoint_id"]:
            histories.append(catalog_pb2.EndpointPriceHistory(endpoint_id=row["endpoint_id"]))
        change = histories[-1].changes.add(pricing=pricing_from_row(row), price_version=row["id"])
        change.effective_time.FromDatetime(row["effective_at"])
    return histories
