"""The order in which a model's endpoints are tried, from the request's preferences and the
live endpoint figures (OpenRouter's provider routing, on Switchboard's own measurements;
docs/ROUTING.md).

For one model (:func:`model_order`):

- **Default** (no ``sort``, no ``order``, no ``:floor``/``:nitro``): load balancing. The
  *stable* endpoints (breaker closed and, once :data:`MIN_UPTIME_REQUESTS` attempts are
  measured, uptime at least :data:`STABLE_UPTIME`) come first, in a random order weighted by
  the inverse square of their price (:func:`weighted`); the others follow as fallbacks,
  cheapest first.
- ``sort=price`` and ``:floor``: cheapest first. ``sort=throughput`` and ``:nitro``: highest
  live output throughput (p50) first; ``sort=latency``: lowest live time to first token (p50)
  first; endpoints not measured yet follow those measured, cheapest first. A model's variant
  decides its own sort over the request's ``sort``.
- ``order``: those providers first, in that order, the rest (when ``allow_fallbacks``) by the
  sort, else by price: as on OpenRouter, ``sort`` and ``order`` turn load balancing off.

Then across the whole plan (:func:`demoted`): endpoints that miss a
``preferred_min_throughput`` or ``preferred_max_latency`` cut-off move behind those that meet
them, and endpoints whose breaker is open go last, each group keeping its order. Pure
functions over a :class:`~switchboard_router.endpoint_stats.LiveView` (local reads, no I/O); the
randomness comes from the ``rng`` given, so tests can seed it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal

from switchboard_router.canonical import Cutoffs, ProviderPrefs
from switchboard_router.catalog_cache import Route
from switchboard_router.endpoint_stats import CLOSED, OPEN, Figures, LiveView

# An endpoint whose attempts failed more often than 1 in 10 over the statistics window has
# had a significant outage: it is a fallback until the failures age out of the window (the
# breaker reacts within seconds; this remembers the last minutes). Below
# MIN_UPTIME_REQUESTS attempts one failure would swing the share too far to judge by.
STABLE_UPTIME = 0.9
MIN_UPTIME_REQUESTS = 10

# A model variant's sort (":floor", ":nitro").
VARIANT_SORTS = {"floor": "price", "nitro": "throughput"}

_PERCENTILES = (("p50", 50), ("p75", 75), ("p90", 90), ("p99", 99))


def _price(route: Route) -> Decimal:
    return route.price_key


def by_price(routes: Sequence[Route]) -> list[Route]:
    """Cheapest first (prompt plus completion rate); equal prices keep their order."""
    return sorted(routes, key=_price)


def stable(route: Route, live: LiveView) -> bool:
    """No significant recent outage: the breaker is closed and the measured uptime, when
    there are enough attempts to judge by, is at least :data:`STABLE_UPTIME`."""
    if live.breaker(route.endpoint_id) != CLOSED:
        return False
    figures = live.figures(route.endpoint_id)
    return (
        figures is None or figures.requests < MIN_UPTIME_REQUESTS or figures.uptime >= STABLE_UPTIME
    )


def weighted(routes: Sequence[Route], rng: random.Random) -> list[Route]:
    """A random order in which each endpoint comes first with a probability proportional to
    1/price² (an endpoint at $1 leads one at $2 four times as often), and so on for each next
    place among those left: weighted sampling without replacement, drawn as an exponential
    race (each endpoint draws Exp(weight), smallest first: Efraimidis and Spirakis), one draw
    per endpoint. Weights are relative to the cheapest, so tiny prices cannot overflow.

    A free endpoint (price 0) has an unbounded weight: the free ones come first, in a uniform
    random order among themselves, then the paid ones, weighted."""
    if len(routes) < 2:  # nothing to order, and no draw (a one-endpoint model: the most common)
        return list(routes)
    free: list[Route] = []
    paid: list[tuple[float, Route]] = []
    for route in routes:
        price = float(route.price_key)
        if price > 0:
            paid.append((price, route))
        else:
            free.append(route)
    rng.shuffle(free)
    if len(paid) > 1:
        cheapest = min(price for price, _ in paid)
        paid = [(rng.expovariate((cheapest / price) ** 2), route) for price, route in paid]
        paid.sort(key=lambda kr: kr[0])
    return free + [route for _, route in paid]


def load_balanced(routes: Sequence[Route], live: LiveView, rng: random.Random) -> list[Route]:
    """The default: the stable endpoints weighted by price, then the others cheapest first."""
    steady: list[Route] = []
    shaky: list[Route] = []
    for route in routes:
        (steady if stable(route, live) else shaky).append(route)
    return weighted(steady, rng) + by_price(shaky)


def _throughput(figures: Figures) -> float | None:
    return None if figures.throughput is None else figures.throughput.p50


def _ttft(figures: Figures) -> float | None:
    return None if figures.ttft is None else figures.ttft.p50


def by_figure(
    routes: Sequence[Route],
    live: LiveView,
    figure: Callable[[Figures], float | None],
    *,
    highest: bool,
) -> list[Route]:
    """The measured endpoints by ``figure`` (highest or lowest first; equal figures cheapest
    first), then the unmeasured ones cheapest first."""
    measured: list[tuple[float, Route]] = []
    unmeasured: list[Route] = []
    for route in by_price(routes):
        figures = live.figures(route.endpoint_id)
        value = None if figures is None else figure(figures)
        if value is None:
            unmeasured.append(route)
        else:
            measured.append((value, route))
    measured.sort(key=lambda vr: -vr[0] if highest else vr[0])  # stable: price breaks ties
    return [route for _, route in measured] + unmeasured


def model_order(
    routes: Sequence[Route],
    prefs: ProviderPrefs,
    variant: str,
    live: LiveView,
    rng: random.Random,
) -> list[Route]:
    """One model's endpoints (already filtered) in the order to try them (module doc)."""
    sort = VARIANT_SORTS.get(variant, prefs.sort)
    if sort == "throughput":
        ordered = by_figure(routes, live, _throughput, highest=True)
    elif sort == "latency":
        ordered = by_figure(routes, live, _ttft, highest=False)
    elif sort == "price" or prefs.order:
        ordered = by_price(routes)
    else:
        ordered = load_balanced(routes, live, rng)
    if not prefs.order:
        return ordered
    rank = {provider: i for i, provider in enumerate(prefs.order)}
    first = sorted((r for r in ordered if r.provider_id in rank), key=lambda r: rank[r.provider_id])
    if not prefs.allow_fallbacks:
        return first
    return first + [r for r in ordered if r.provider_id not in rank]


def _cutoffs(cutoffs: Cutoffs) -> list[tuple[int, float]]:
    """(percentile, value) for each cut-off set."""
    out = []
    for name, percentile in _PERCENTILES:
        value: float | None = getattr(cutoffs, name)
        if value is not None:
            out.append((percentile, value))
    return out


def meets_cutoffs(route: Route, prefs: ProviderPrefs, live: LiveView) -> bool:
    """Whether the endpoint's live figures meet every cut-off the request sets; an endpoint
    without the figure a cut-off needs meets it (OpenRouter: not measured is not slow)."""
    if prefs.min_throughput is None and prefs.max_latency is None:
        return True
    figures = live.figures(route.endpoint_id)
    if figures is None:
        return True
    if prefs.min_throughput is not None and figures.throughput is not None:
        measured = figures.throughput
        if any(measured.at(p) < cut for p, cut in _cutoffs(prefs.min_throughput)):
            return False
    if prefs.max_latency is not None and figures.ttft is not None:
        measured = figures.ttft
        if any(measured.at(p) > cut for p, cut in _cutoffs(prefs.max_latency)):
            return False
    return True


def demoted(planned: list[Route], prefs: ProviderPrefs, live: LiveView) -> list[Route]:
    """The whole plan (every model's endpoints, in order) with those that miss a cut-off
    behind those that meet them, and those whose breaker is open last; each group keeps its
    order. Across models, as OpenRouter does: a fallback model's endpoint that meets the
    cut-offs goes before the requested model's endpoints that miss them."""

    def rank(route: Route) -> tuple[bool, bool]:
        return live.breaker(route.endpoint_id) == OPEN, not meets_cutoffs(route, prefs, live)

    return sorted(planned, key=rank)
