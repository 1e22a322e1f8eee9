"""A request's ``provider`` object (``router.v1.ProviderPreferences``) validated into a canonical
:class:`ProviderPrefs`, with every problem named by its proto path (``provider.zdr``,
``provider.preferred_max_latency.p90``). What each field does to the plan is
:mod:`switchboard_router.routing`'s (docs/ROUTING.md).

Bounds, beyond what the proto states:

- ``quantizations``: at most :data:`MAX_QUANTIZATIONS`, each 1 to 32 characters of lower-case
  letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit (OpenRouter's
  ``int4``, ``fp8``, ``bf16``, ``unknown``; the catalog's rule for ``Endpoint.quantization``,
  so every stored value can be asked for: ``q4.0``), none twice.
- ``preferred_min_throughput`` / ``preferred_max_latency``: each value set is finite, above 0
  and at most :data:`MAX_CUTOFF` (a million tokens a second, or seconds: far past anything
  measured, so no real cut-off is refused). A message with no value set is no cut-off.
- ``hedge``: the shared rules of ``common.v1.Hedging``
  (:func:`switchboard_core.hedging.hedging_violations`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.catalog_ids import QUANTIZATION
from switchboard_core.hedging import DEFAULT_PERCENTILE, hedging_violations
from switchboard_core.money import MoneyFormatError, parse_usd
from switchboard_router.canonical import Cutoffs, HedgePolicy, ProviderPrefs

SORTS = {
    router_pb2.PROVIDER_SORT_UNSPECIFIED: "",
    router_pb2.PROVIDER_SORT_PRICE: "price",
    router_pb2.PROVIDER_SORT_THROUGHPUT: "throughput",
    router_pb2.PROVIDER_SORT_LATENCY: "latency",
}
MAX_QUANTIZATIONS = 16
MAX_CUTOFF = 1e6
_PERCENTILES = ("p50", "p75", "p90", "p99")

Problems = list[tuple[str, str]]
# What a request without a provider object asks for: the defaults.
NO_PREFS = ProviderPrefs()


def provider_prefs(p: router_pb2.ProviderPreferences, problems: Problems) -> ProviderPrefs:
    """The canonical preferences; problems are appended to ``problems`` (the caller raises)."""
    if p.sort not in SORTS:
        problems.append(("provider.sort", "unknown sort"))
    if p.data_collection not in router_pb2.DataCollection.values():
        problems.append(("provider.data_collection", "unknown value"))
    return ProviderPrefs(
        order=tuple(p.order),
        only=frozenset(p.only),
        ignore=frozenset(p.ignore),
        allow_fallbacks=p.allow_fallbacks if p.HasField("allow_fallbacks") else True,
        sort=SORTS.get(p.sort, ""),
        max_prompt_price=_price(
            "provider.max_price.prompt_usd_per_mtok", p.max_price.prompt_usd_per_mtok, problems
        ),
        max_completion_price=_price(
            "provider.max_price.completion_usd_per_mtok",
            p.max_price.completion_usd_per_mtok,
            problems,
        ),
        require_parameters=p.require_parameters,
        deny_data_collection=p.data_collection == router_pb2.DATA_COLLECTION_DENY,
        zdr=p.zdr,
        quantizations=_quantizations(p.quantizations, problems),
        min_throughput=_cutoffs(
            "provider.preferred_min_throughput", p.preferred_min_throughput, problems
        ),
        max_latency=_cutoffs("provider.preferred_max_latency", p.preferred_max_latency, problems),
        hedge=_hedge(p.hedge, problems),
    )


def hedge_policy(hedging: common_pb2.Hedging) -> HedgePolicy | None:
    """A valid ``Hedging`` (the request's or a model's) as the relay applies it: None for
    ``MODE_UNSPECIFIED`` (inherit the next level), disabled for ``MODE_OFF``. ``delay`` is in
    seconds; with ``MODE_LIVE_TTFT`` a ``delay`` of 0 means the router's default
    (``SWITCHBOARD_HEDGE_DELAY_SECONDS``) until the endpoint has live figures, and
    ``percentile`` is never 0 (0 is a fixed delay)."""
    mode = hedging.mode
    if mode == common_pb2.Hedging.MODE_OFF:
        return HedgePolicy(enabled=False)
    if mode == common_pb2.Hedging.MODE_FIXED_DELAY:
        return HedgePolicy(enabled=True, delay=hedging.delay_ms / 1000)
    if mode == common_pb2.Hedging.MODE_LIVE_TTFT:
        return HedgePolicy(
            enabled=True,
            delay=hedging.delay_ms / 1000,
            percentile=hedging.ttft_percentile or DEFAULT_PERCENTILE,
        )
    return None


def _hedge(hedging: common_pb2.Hedging, problems: Problems) -> HedgePolicy | None:
    found = hedging_violations(hedging, "provider.hedge")
    problems.extend(found)
    return None if found else hedge_policy(hedging)


def _price(field: str, text: str, problems: Problems) -> Decimal | None:
    if not text:
        return None
    try:
        return parse_usd(text)
    except MoneyFormatError as error:
        problems.append((field, str(error)))
        return None


def _quantizations(values: Iterable[str], problems: Problems) -> frozenset[str]:
    listed = list(values)
    if len(listed) > MAX_QUANTIZATIONS:
        problems.append(("provider.quantizations", f"at most {MAX_QUANTIZATIONS}"))
        return frozenset()
    seen: set[str] = set()
    for i, value in enumerate(listed):
        if not QUANTIZATION.fullmatch(value):
            problems.append(
                (
                    f"provider.quantizations[{i}]",
                    "1 to 32 lower-case letters, digits, '.', '_' or '-', e.g. 'fp8'",
                )
            )
        elif value in seen:
            problems.append((f"provider.quantizations[{i}]", f"{value!r} is given twice"))
        seen.add(value)
    return frozenset(listed)


def _cutoffs(
    field: str, cutoffs: router_pb2.PerformanceCutoffs, problems: Problems
) -> Cutoffs | None:
    values: dict[str, float] = {}
    for name in _PERCENTILES:
        if not cutoffs.HasField(name):  # type: ignore[arg-type]
            continue
        value: float = getattr(cutoffs, name)
        if not (math.isfinite(value) and 0 < value <= MAX_CUTOFF):
            problems.append((f"{field}.{name}", f"must be above 0 and at most {MAX_CUTOFF:,.0f}"))
        values[name] = value
    return Cutoffs(**values) if values else None
