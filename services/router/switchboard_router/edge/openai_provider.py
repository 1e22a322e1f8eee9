"""OpenRouter's ``provider`` object as ``router.v1.ProviderPreferences``
(https://openrouter.ai/docs/features/provider-routing): ``order``, ``only``, ``ignore``,
``allow_fallbacks``, ``sort`` (a string, or ``{"by": ...}``), ``max_price`` (USD per million
tokens, numbers or decimal strings), ``require_parameters``, ``data_collection``
(``allow``/``deny``), ``zdr``, ``quantizations``, ``preferred_min_throughput`` and
``preferred_max_latency`` (a number: the p50 cut-off, or ``{"p50", "p75", "p90", "p99"}``).
Members this router does not route on (``experimental``, ``enforce_distillable_text``) are
ignored like any unknown member.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from switchboard.router.v1 import router_pb2
from switchboard_core.money import format_usd
from switchboard_router.edge.openai_json import Reader

SORTS = {
    "price": router_pb2.PROVIDER_SORT_PRICE,
    "throughput": router_pb2.PROVIDER_SORT_THROUGHPUT,
    "latency": router_pb2.PROVIDER_SORT_LATENCY,
}
DATA_COLLECTION = {
    "allow": router_pb2.DATA_COLLECTION_ALLOW,
    "deny": router_pb2.DATA_COLLECTION_DENY,
}
_PERCENTILES = ("p50", "p75", "p90", "p99")


def provider(body: dict[str, Any], read: Reader) -> router_pb2.ProviderPreferences | None:
    given = read.obj(body, "provider", "provider")
    if given is None:
        return None
    out = router_pb2.ProviderPreferences()
    for name in ("order", "only", "ignore", "quantizations"):
        getattr(out, name).extend(read.strings(given, name, f"provider.{name}"))
    fallbacks = read.boolean(given, "allow_fallbacks", "provider.allow_fallbacks")
    if fallbacks is not None:
        out.allow_fallbacks = fallbacks
    out.require_parameters = bool(
        read.boolean(given, "require_parameters", "provider.require_parameters")
    )
    out.zdr = bool(read.boolean(given, "zdr", "provider.zdr"))
    collection = read.one_of(given, "data_collection", "provider.data_collection", DATA_COLLECTION)
    if collection is not None:
        out.data_collection = collection
    by = given.get("sort")
    if isinstance(by, dict):
        sort = read.one_of(by, "by", "provider.sort.by", SORTS)
    else:
        sort = read.one_of(given, "sort", "provider.sort", SORTS)
    if sort is not None:
        out.sort = sort
    prices = read.obj(given, "max_price", "provider.max_price") or {}
    out.max_price.prompt_usd_per_mtok = _usd(prices, "prompt", read)
    out.max_price.completion_usd_per_mtok = _usd(prices, "completion", read)
    for name in ("preferred_min_throughput", "preferred_max_latency"):
        cutoffs = _cutoffs(given, name, read)
        if cutoffs is not None:
            getattr(out, name).CopyFrom(cutoffs)
    return out


def _usd(prices: dict[str, Any], key: str, read: Reader) -> str:
    """A price as the decimal string the router reads ("" when not given)."""
    value = prices.get(key)
    where = f"provider.max_price.{key}"
    if value is None:
        return ""
    if isinstance(value, str):
        return value  # the router checks the decimal itself
    if isinstance(value, bool) or not isinstance(value, int | float):
        read.bad(where, "must be a number or a decimal string")
        return ""
    try:
        amount = Decimal(repr(value))  # the JSON number as written: 0.1 is 0.1
    except InvalidOperation:
        read.bad(where, "must be a finite number")
        return ""
    if not amount.is_finite() or amount < 0 or amount > 10**9:
        read.bad(where, "must be from 0 to 1000000000 USD per million tokens")
        return ""
    return format_usd(amount)


def _cutoffs(
    given: dict[str, Any], name: str, read: Reader
) -> router_pb2.PerformanceCutoffs | None:
    where = f"provider.{name}"
    value = given.get(name)
    if value is None:
        return None
    out = router_pb2.PerformanceCutoffs()
    if isinstance(value, dict):
        for percentile in _PERCENTILES:
            number = read.number(value, percentile, f"{where}.{percentile}")
            if number is not None:
                setattr(out, percentile, number)
        return out
    number = read.number(given, name, where)
    if number is not None:
        out.p50 = number
    return out
