"""Database rows to protos and back: enum names, prices, timestamps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from google.protobuf import timestamp_pb2

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_core.money import format_usd, parse_usd

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


def pricing_from_row(row: Row) -> common_pb2.Pricing:
    """The four price columns (of ``endpoints`` or ``endpoint_prices``)."""
    return common_pb2.Pricing(
        prompt_usd_per_mtok=format_usd(row["prompt_price"]),
        completion_usd_per_mtok=format_usd(row["completion_price"]),
        cached_prompt_usd_per_mtok=price_from_db(row["cached_prompt_price"]),
        cache_write_usd_per_mtok=price_from_db(row["cache_write_price"]),
    )


def endpoint_from_row(row: Row) -> catalog_pb2.Endpoint:
    return catalog_pb2.Endpoint(
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
    )


def models_from_rows(
    model_rows: Iterable[Row], endpoint_rows: Iterable[Row]
) -> list[catalog_pb2.Model]:
    """Joins endpoints (in their row order) to their models (in theirs)."""
    by_model: dict[str, list[catalog_pb2.Endpoint]] = {}
    for row in endpoint_rows:
        by_model.setdefault(row["model_id"], []).append(endpoint_from_row(row))
    return [model_from_row(row, by_model.get(row["id"], ())) for row in model_rows]


def price_history_from_rows(rows: Iterable[Row]) -> list[catalog_pb2.EndpointPriceHistory]:
    """``endpoint_prices`` rows, ordered by endpoint then time, grouped by endpoint."""
    histories: list[catalog_pb2.EndpointPriceHistory] = []
    for row in rows:
        if not histories or histories[-1].endpoint_id != row["endpoint_id"]:
            histories.append(catalog_pb2.EndpointPriceHistory(endpoint_id=row["endpoint_id"]))
        change = histories[-1].changes.add(pricing=pricing_from_row(row))
        change.effective_time.FromDatetime(row["effective_at"])
    return histories
