"""Which endpoints serve a request, in the order to try them (OpenRouter semantics;
docs/ROUTING.md).

The model, then each fallback model; within a model: keep the endpoints every filter of
:data:`FILTERS` lets through (``only``/``ignore``, maximum price, the data policy filters,
required parameters, image input), then order them (:mod:`switchboard_router.route_order`:
load balancing by price among the stable endpoints by default, or the ``sort``, variant and
``order`` asked for). Across the whole plan, endpoints that miss a performance cut-off move
behind those that meet them and open breakers go last. Retired models and endpoints are
skipped (the router's clock; ``lifecycle.py``); when the requested model itself is retired and
nothing else is left, the request fails with ``MODEL_RETIRED`` naming the date and the
successor. When nothing is left otherwise, ``NOT_FOUND`` names the filter that left nothing.
Pure functions over a catalog :class:`Snapshot` and a
:class:`~switchboard_router.endpoint_stats.LiveView`: no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from switchboard_core.catalog_ids import MODEL_VARIANTS
from switchboard_core.errors import InvalidArgument, NotFound
from switchboard_router.canonical import CompletionRequest, ProviderPrefs
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.endpoint_stats import NO_LIVE_VIEW, LiveView
from switchboard_router.lifecycle import NO_LIFECYCLE, Lifecycle, now_utc, retired_error
from switchboard_router.route_order import demoted, model_order

VARIANTS = MODEL_VARIANTS

# The default source of the load balancer's randomness (tests pass a seeded one).
_RNG = random.Random()


def split_variant(model: str) -> tuple[str, str]:
    """``"meta-llama/llama-3.3-70b-instruct:nitro"`` -> (model id, "nitro")."""
    base, sep, variant = model.rpartition(":")
    if sep and variant in VARIANTS:
        return base, variant
    return model, ""


@dataclass(frozen=True, slots=True)
class Asked:
    """What the filters compare, worked out once per request."""

    prefs: ProviderPrefs
    needed: frozenset[str]  # the parameters set, when require_parameters is on
    image: bool

    @classmethod
    def of(cls, request: CompletionRequest) -> Asked:
        prefs = request.provider
        needed = request.set_parameters() if prefs.require_parameters else frozenset()
        return cls(prefs, needed, request.has_image)


@dataclass(frozen=True, slots=True)
class Filter:
    """One reason to skip an endpoint: ``field`` is the request field named when it leaves
    nothing, ``keeps`` says what it lets through, ``applies`` whether the request asks for it
    at all (a plan runs only the filters asked for: most requests ask for none)."""

    field: str
    keeps: str
    applies: Callable[[Asked], bool]
    passes: Callable[[Route, Asked], bool]


FILTERS: tuple[Filter, ...] = (
    Filter(
        "provider.only",
        "the providers listed",
        lambda a: bool(a.prefs.only),
        lambda r, a: not a.prefs.only or r.provider_id in a.prefs.only,
    ),
    Filter(
        "provider.ignore",
        "providers not listed",
        lambda a: bool(a.prefs.ignore),
        lambda r, a: r.provider_id not in a.prefs.ignore,
    ),
    Filter(
        "provider.max_price.prompt_usd_per_mtok",
        "endpoints at or under that prompt price",
        lambda a: a.prefs.max_prompt_price is not None,
        lambda r, a: (
            a.prefs.max_prompt_price is None or r.base_rates.prompt <= a.prefs.max_prompt_price
        ),
    ),
    Filter(
        "provider.max_price.completion_usd_per_mtok",
        "endpoints at or under that completion price",
        lambda a: a.prefs.max_completion_price is not None,
        lambda r, a: (
            a.prefs.max_completion_price is None
            or r.base_rates.completion <= a.prefs.max_completion_price
        ),
    ),
    Filter(
        "provider.data_collection",
        "endpoints whose provider neither stores prompts nor trains on them (DATA_COLLECTION_DENY)",
        lambda a: a.prefs.deny_data_collection,
        lambda r, a: not (a.prefs.deny_data_collection and r.retains_prompts),
    ),
    Filter(
        "provider.zdr",
        "zero-data-retention endpoints",
        lambda a: a.prefs.zdr,
        lambda r, a: not a.prefs.zdr or r.zero_data_retention,
    ),
    Filter(
        "provider.quantizations",
        "endpoints of the quantizations listed (an endpoint of unknown quantization is none)",
        lambda a: bool(a.prefs.quantizations),
        lambda r, a: not a.prefs.quantizations or r.quantization in a.prefs.quantizations,
    ),
    Filter(
        "provider.require_parameters",
        "endpoints that support every parameter the request sets",
        lambda a: bool(a.needed),
        lambda r, a: a.needed <= r.supported_parameters,
    ),
    Filter(
        "messages",
        "endpoints that accept image input",
        lambda a: a.image,
        lambda r, a: not a.image or "image" in r.input_modalities,
    ),
)


def eligible(routes: tuple[Route, ...], asked: Asked, filters: tuple[Filter, ...]) -> list[Route]:
    """The routes each of ``filters`` lets through, in their order."""
    if not filters:
        return list(routes)
    return [r for r in routes if all(f.passes(r, asked) for f in filters)]


def plan(
    request: CompletionRequest,
    snapshot: Snapshot,
    now: datetime | None = None,
    live: LiveView = NO_LIVE_VIEW,
    rng: random.Random | None = None,
) -> list[Route]:
    """Endpoints to try, in order; raises NOT_FOUND for an unknown model or when the
    preferences leave nothing, and FAILED_PRECONDITION (``MODEL_RETIRED``) for a retired
    model no fallback replaces. ``rng``: the load balancer's randomness (a seeded one in
    tests)."""
    now = now or now_utc()
    rng = rng or _RNG
    asked = Asked.of(request)
    filters = tuple(f for f in FILTERS if f.applies(asked))
    planned: list[Route] = []
    retired: Lifecycle | None = None  # the requested model's, when it is retired
    for index, name in enumerate((request.model, *request.fallback_models)):
        model, variant = split_variant(name)
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
        kept = eligible(live_routes(routes, now), asked, filters)
        planned.extend(model_order(kept, request.provider, variant, live, rng))
    if not planned:
        if retired is not None:
            raise retired_error(split_variant(request.model)[0], retired)
        raise _nothing_matches(request, snapshot, now)
    return demoted(planned, request.provider, live)


def live_routes(routes: tuple[Route, ...], now: datetime) -> tuple[Route, ...]:
    """``routes`` without the endpoints retired at ``now`` (a snapshot built earlier may
    still hold them until it is rebuilt)."""
    return tuple(route for route in routes if not route.lifecycle.retired(now))


def _nothing_matches(request: CompletionRequest, snapshot: Snapshot, now: datetime) -> Exception:
    """The most useful explanation of why no endpoint was left: image input the model never
    takes, else the first filter (in :data:`FILTERS` order) that left none of the requested
    model's endpoints."""
    model, _ = split_variant(request.model)
    routes: list[Route] = list(live_routes(snapshot.routes.get(model, ()), now))
    asked = Asked.of(request)
    if asked.image and not any("image" in r.input_modalities for r in routes):
        return InvalidArgument({"messages": f"model {model!r} does not accept image input"})
    for step in FILTERS:
        left = [r for r in routes if step.passes(r, asked)]
        if routes and not left:
            if step.field == "provider.require_parameters":
                return _unsupported_parameters(model, routes, asked.needed)
            return NotFound(
                f"no endpoint of {request.model!r} matches the request's provider preferences:"
                f" {step.field} keeps only {step.keeps}, and none of the {len(routes)}"
                f" {'endpoint' if len(routes) == 1 else 'endpoints'} left by the filters"
                " before it is one",
                reason="NO_ENDPOINT_MATCHES",
                metadata={"model": request.model, "filter": step.field},
            )
        routes = left
    return NotFound(
        f"no endpoint of {request.model!r} matches the request's provider preferences",
        reason="NO_ENDPOINT_MATCHES",
        metadata={"model": request.model},
    )


def _unsupported_parameters(
    model: str, candidates: list[Route], needed: frozenset[str]
) -> NotFound:
    best = min(candidates, key=lambda r: len(needed - r.supported_parameters))
    return NotFound(
        f"no endpoint of {model!r} supports every parameter the request sets"
        " (provider.require_parameters is on); the closest lacks: "
        + ", ".join(sorted(needed - best.supported_parameters)),
        reason="NO_ENDPOINT_SUPPORTS_PARAMETERS",
        metadata={"model": model},
    )
