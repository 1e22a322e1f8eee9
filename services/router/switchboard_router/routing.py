"""Which endpoints serve a request, in the order to try them (OpenRouter semantics).

The model, then each fallback model; within a model: filter by ``only``/``ignore``, maximum
price and required parameters, sort (cheapest first by default; ``:floor`` sorts by price),
then move the ``order`` providers to the front (and drop the rest when fallbacks are off).
Retired models and endpoints are skipped (the router's clock; ``lifecycle.py``); when the
requested model itself is retired and nothing else is left, the request fails with
``MODEL_RETIRED`` naming the date and the successor. Pure functions over a catalog
:class:`Snapshot`: no I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from switchboard_core.catalog_ids import MODEL_VARIANTS
from switchboard_core.errors import InvalidArgument, NotFound
from switchboard_router.canonical import CompletionRequest
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.lifecycle import NO_LIFECYCLE, Lifecycle, now_utc, retired_error

VARIANTS = MODEL_VARIANTS


def split_variant(model: str) -> tuple[str, str]:
    """``"meta-llama/llama-3.3-70b-instruct:nitro"`` -> (model id, "nitro")."""
    base, sep, variant = model.rpartition(":")
    if sep and variant in VARIANTS:
        return base, variant
    return model, ""


def plan(
    request: CompletionRequest, snapshot: Snapshot, now: datetime | None = None
) -> list[Route]:
    """Endpoints to try, in order; raises NOT_FOUND for an unknown model and
    FAILED_PRECONDITION (``MODEL_RETIRED``) for a retired one no fallback replaces."""
    now = now or now_utc()
    planned: list[Route] = []
    retired: Lifecycle | None = None  # the requested model's, when it is retired
    for index, name in enumerate((request.model, *request.fallback_models)):
        model, _variant = split_variant(name)
        routes = snapshot.routes.get(model)
        if routes is None:
            if index == 0:
                raise NotFound(
                    f"model {model!r} is not in the catalog",
                    reason="MODEL_NOT_FOUND",
                    metadata={"model": model},
                )
            raise InvalidArgument(
                {f"fallback_models[{index - 1}]": f"model {model!r} is not in the catalog"}
            )
        lifecycle = snapshot.lifecycles.get(model, NO_LIFECYCLE)
        if lifecycle.retired(now):
            retired = lifecycle if index == 0 else retired
            continue
        planned.extend(order_routes(live_routes(routes, now), request))
    if not planned:
        if retired is not None:
            raise retired_error(split_variant(request.model)[0], retired)
        raise _nothing_matches(request, snapshot, now)
    return planned


def live_routes(routes: tuple[Route, ...], now: datetime) -> tuple[Route, ...]:
    """``routes`` without the endpoints retired at ``now`` (a snapshot built earlier may
    still hold them until it is rebuilt)."""
    return tuple(route for route in routes if not route.lifecycle.retired(now))


def _nothing_matches(request: CompletionRequest, snapshot: Snapshot, now: datetime) -> Exception:
    """The most useful explanation of why no endpoint was left."""
    model, _ = split_variant(request.model)
    routes = live_routes(snapshot.routes.get(model, ()), now)
    if request.has_image and not any("image" in r.input_modalities for r in routes):
        return InvalidArgument({"messages": f"model {model!r} does not accept image input"})
    if request.provider.require_parameters:
        relaxed = replace(request, provider=replace(request.provider, require_parameters=False))
        candidates = order_routes(routes, relaxed)
        if candidates:
            needed = request.set_parameters()
            best = min(candidates, key=lambda r: len(needed - r.supported_parameters))
            return NotFound(
                f"no endpoint of {model!r} supports every parameter the request sets"
                " (provider.require_parameters is on); the closest lacks: "
                + ", ".join(sorted(needed - best.supported_parameters)),
                reason="NO_ENDPOINT_SUPPORTS_PARAMETERS",
                metadata={"model": model},
            )
    return NotFound(
        f"no endpoint of {request.model!r} matches the request's provider preferences",
        reason="NO_ENDPOINT_MATCHES",
        metadata={"model": request.model},
    )


def order_routes(routes: tuple[Route, ...], request: CompletionRequest) -> list[Route]:
    prefs = request.provider
    needed = request.set_parameters() if prefs.require_parameters else frozenset()
    kept = [
        r
        for r in routes
        if (not prefs.only or r.provider_id in prefs.only)
        and r.provider_id not in prefs.ignore
        and (prefs.max_prompt_price is None or r.base_rates.prompt <= prefs.max_prompt_price)
        and (
            prefs.max_completion_price is None
            or r.base_rates.completion <= prefs.max_completion_price
        )
        and needed <= r.supported_parameters
        and (not request.has_image or "image" in r.input_modalities)
    ]
    # Cheapest first: the default, ":floor" and sort=price. Sorting by throughput or latency
    # (and ":nitro") needs live endpoint stats, which come with health tracking; until then
    # those keep the price order too.
    kept.sort(key=lambda r: r.price_key)
    if not prefs.order:
        return kept
    rank = {provider: i for i, provider in enumerate(prefs.order)}
    first = sorted((r for r in kept if r.provider_id in rank), key=lambda r: rank[r.provider_id])
    if not prefs.allow_fallbacks:
        return first
    return first + [r for r in kept if r.provider_id not in rank]
