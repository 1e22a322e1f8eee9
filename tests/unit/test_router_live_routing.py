"""Routing on live figures: the default's price-weighted draw among stable endpoints, the live
sorts, performance cut-offs, open breakers last, and the data policy filters. A fake
:class:`LiveView` stands for the shared statistics and a seeded ``random.Random`` for the
load balancer's randomness, so every test is deterministic."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from switchboard_core.errors import InvalidArgument, NotFound
from switchboard_router.canonical import CompletionRequest, Cutoffs, Message, ProviderPrefs, Role
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.endpoint_stats import CLOSED, HALF_OPEN, OPEN, Figures, Percentiles
from switchboard_router.key_rules import KeyRules, allowed_plan
from switchboard_router.route_order import MIN_UPTIME_REQUESTS, STABLE_UPTIME, weighted
from switchboard_router.routing import plan
from tests.unit.test_router_routing import providers, route

MODEL = "acme/m"
BACKUP = "acme/backup"


@dataclass
class FakeLive:
    """A LiveView: figures and breaker states by endpoint id. ``allows`` takes a half-open
    probe slot in the real one: planning must never call it."""

    stats: dict[str, Figures] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)

    def figures(self, endpoint_id: str) -> Figures | None:
        return self.stats.get(endpoint_id)

    def breaker(self, endpoint_id: str) -> str:
        return self.breakers.get(endpoint_id, CLOSED)

    def allows(self, endpoint_id: str) -> bool:
        raise AssertionError("planning must not take a probe slot")


def flat(p50: float, p90: float | None = None) -> Percentiles:
    return Percentiles(p50, p50, p90 if p90 is not None else p50, p90 if p90 is not None else p50)


def figures(
    *,
    requests: int = 100,
    failures: int = 0,
    ttft: Percentiles | None = None,
    throughput: Percentiles | None = None,
) -> Figures:
    return Figures(300.0, requests, failures, 0, ttft, throughput)


def at(provider: str, price: str, model: str = MODEL, **changes: object) -> Route:
    """An endpoint whose prompt and completion rates are each half of ``price`` (so its
    price_key, the weight's price, is ``price``)."""
    half = str(Decimal(price) / 2)
    return dataclasses.replace(route(model, provider, half, half), **changes)  # type: ignore[arg-type]


def snapshot(*routes: Route) -> Snapshot:
    by_model: dict[str, list[Route]] = {}
    for r in routes:
        by_model.setdefault(r.model_id, []).append(r)
    return Snapshot(
        version=1,
        routes={m: tuple(rs) for m, rs in by_model.items()},
        provider_ids=frozenset(r.provider_id for r in routes),
    )


def ask(model: str = MODEL, **prefs: Any) -> CompletionRequest:
    fallbacks = prefs.pop("fallback_models", ())
    return CompletionRequest(
        model=model,
        messages=(Message.of(Role.USER, "hi"),),
        fallback_models=fallbacks,
        provider=ProviderPrefs(**prefs),
    )


def first_shares(
    catalog: Snapshot, live: FakeLive | None = None, draws: int = 20_000, **prefs: Any
) -> dict[str, float]:
    rng = random.Random(20261130)
    counts = Counter(
        plan(ask(**prefs), catalog, live=live or FakeLive(), rng=rng)[0].provider_id
        for _ in range(draws)
    )
    return {p: n / draws for p, n in counts.items()}


# --- the default: load balancing by price ----------------------------------------------------


def test_the_default_leads_with_each_endpoint_in_proportion_to_one_over_its_price_squared() -> None:
    two = snapshot(at("a", "1"), at("b", "2"))
    shares = first_shares(two)
    assert shares["a"] == pytest.approx(0.8, abs=0.015)  # 1 : 1/4, so 4:1
    three = snapshot(at("a", "1"), at("b", "2"), at("c", "3"))
    shares = first_shares(three)
    total = 1 + 1 / 4 + 1 / 9
    for provider, price in (("a", 1), ("b", 2), ("c", 3)):
        assert shares[provider] == pytest.approx(1 / price**2 / total, abs=0.015)


def test_every_later_place_is_weighted_the_same_way_among_those_left() -> None:
    catalog = snapshot(at("a", "1"), at("b", "2"), at("c", "3"))
    rng = random.Random(7)
    seconds = Counter(providers(plan(ask(), catalog, rng=rng))[1] for _ in range(20_000))
    # P(second = b) = sum over leaders: P(a first)·w_b/(w_b+w_c) + P(c first)·w_b/(w_a+w_b).
    wa, wb, wc = 1, 1 / 4, 1 / 9
    total = wa + wb + wc
    expected_b = wa / total * wb / (wb + wc) + wc / total * wb / (wa + wb)
    assert seconds["b"] / 20_000 == pytest.approx(expected_b, abs=0.015)


def test_a_seeded_rng_gives_the_same_plans() -> None:
    catalog = snapshot(at("a", "1"), at("b", "1.2"), at("c", "1.5"), at("d", "2"))
    draw = [providers(plan(ask(), catalog, rng=random.Random(5))) for _ in range(3)]
    assert draw[0] == draw[1] == draw[2]
    orders = {tuple(providers(plan(ask(), catalog, rng=random.Random(s)))) for s in range(50)}
    assert len(orders) > 1  # and different seeds spread the load


def test_free_endpoints_lead_evenly_and_paid_ones_follow_weighted() -> None:
    catalog = snapshot(at("free1", "0"), at("free2", "0"), at("paid", "1"))
    shares = first_shares(catalog)
    assert set(shares) == {"free1", "free2"}
    assert shares["free1"] == pytest.approx(0.5, abs=0.015)
    rng = random.Random(3)
    assert all(providers(plan(ask(), catalog, rng=rng))[2] == "paid" for _ in range(200))


def test_weights_do_not_overflow_on_tiny_prices() -> None:
    tiny = [at("a", "0.000002"), at("b", "0.000004"), at("c", "5000")]
    rng = random.Random(1)
    leaders = Counter(weighted(tiny, rng)[0].provider_id for _ in range(5_000))
    assert leaders["a"] / 5_000 == pytest.approx(0.8, abs=0.03)
    assert leaders["c"] == 0


def test_endpoints_with_a_recent_outage_are_fallbacks_by_price() -> None:
    cheap, mid, dear = at("cheap", "1"), at("mid", "2"), at("dear", "3")
    live = FakeLive(
        stats={
            # 70% uptime over the window: a significant outage, though the breaker is closed.
            cheap.endpoint_id: figures(requests=100, failures=30),
        },
        breakers={mid.endpoint_id: HALF_OPEN},
    )
    catalog = snapshot(cheap, mid, dear)
    rng = random.Random(11)
    for _ in range(100):
        assert providers(plan(ask(), catalog, live=live, rng=rng)) == ["dear", "cheap", "mid"]


def test_uptime_is_judged_only_on_enough_attempts_and_at_the_documented_threshold() -> None:
    cheap, dear = at("cheap", "1"), at("dear", "100")
    few = FakeLive(stats={cheap.endpoint_id: figures(requests=MIN_UPTIME_REQUESTS - 1, failures=4)})
    edge_failures = round(MIN_UPTIME_REQUESTS * 10 * (1 - STABLE_UPTIME))
    edge = FakeLive(
        stats={
            cheap.endpoint_id: figures(requests=MIN_UPTIME_REQUESTS * 10, failures=edge_failures)
        }
    )
    worse = FakeLive(
        stats={
            cheap.endpoint_id: figures(
                requests=MIN_UPTIME_REQUESTS * 10, failures=edge_failures + 1
            )
        }
    )
    catalog = snapshot(cheap, dear)
    # Still stable (too few attempts to judge; exactly at the threshold): $1 vs $100 leads
    # nearly always.
    assert first_shares(catalog, few, draws=2_000)["cheap"] > 0.99
    assert first_shares(catalog, edge, draws=2_000)["cheap"] > 0.99
    assert first_shares(catalog, worse, draws=200) == {"dear": 1.0}


# --- sorts, order and breakers -----------------------------------------------------------------


def test_sort_throughput_and_nitro_put_the_fastest_first_and_the_unmeasured_after_by_price() -> (
    None
):
    slow, fast, new_cheap, new_dear = (
        at("slow", "1"),
        at("fast", "3"),
        at("new-cheap", "2"),
        at("new-dear", "5"),
    )
    live = FakeLive(
        stats={
            slow.endpoint_id: figures(throughput=flat(40)),
            fast.endpoint_id: figures(throughput=flat(180)),
            new_cheap.endpoint_id: figures(ttft=flat(0.3)),  # no throughput measured yet
        }
    )
    catalog = snapshot(slow, fast, new_cheap, new_dear)
    expected = ["fast", "slow", "new-cheap", "new-dear"]
    assert providers(plan(ask(sort="throughput"), catalog, live=live)) == expected
    assert providers(plan(ask(MODEL + ":nitro"), catalog, live=live)) == expected


def test_sort_latency_puts_the_quickest_first_token_first() -> None:
    a, b, c = at("a", "1"), at("b", "2"), at("c", "3")
    live = FakeLive(
        stats={a.endpoint_id: figures(ttft=flat(2.0)), b.endpoint_id: figures(ttft=flat(0.4))}
    )
    catalog = snapshot(a, b, c)
    assert providers(plan(ask(sort="latency"), catalog, live=live)) == ["b", "a", "c"]


def test_a_variant_decides_its_models_sort() -> None:
    cheap, fast = at("cheap", "1"), at("fast", "3")
    live = FakeLive(stats={fast.endpoint_id: figures(throughput=flat(200))})
    catalog = snapshot(cheap, fast)
    floor = ask(MODEL + ":floor", sort="throughput")
    assert providers(plan(floor, catalog, live=live)) == ["cheap", "fast"]


def test_order_and_sort_turn_load_balancing_off() -> None:
    catalog = snapshot(at("a", "1"), at("b", "2"), at("c", "3"), at("d", "4"))
    for seed in range(20):
        rng = random.Random(seed)
        assert providers(plan(ask(sort="price"), catalog, rng=rng)) == ["a", "b", "c", "d"]
        ordered = plan(ask(order=("c",)), catalog, rng=rng)
        assert providers(ordered) == ["c", "a", "b", "d"]


@pytest.mark.parametrize(
    "prefs",
    [
        {},
        {"sort": "price"},
        {"sort": "throughput"},
        {"sort": "latency"},
        {"order": ("a", "b")},
        {"order": ("a",), "allow_fallbacks": False},
    ],
)
def test_open_breakers_go_last_in_every_order(prefs: dict[str, Any]) -> None:
    a, b, c = at("a", "1"), at("b", "2"), at("c", "3")
    live = FakeLive(
        stats={a.endpoint_id: figures(ttft=flat(0.1), throughput=flat(500))},
        breakers={a.endpoint_id: OPEN},
    )
    planned = providers(plan(ask(**prefs), snapshot(a, b, c), live=live, rng=random.Random(2)))
    assert planned[-1] == "a"
    if not prefs.get("allow_fallbacks", True):
        assert planned == ["a"]  # still planned: the relay skips it without a network call


def test_open_breakers_go_last_across_fallback_models_too() -> None:
    main, backup = at("a", "1"), at("b", "1", model=BACKUP)
    live = FakeLive(breakers={main.endpoint_id: OPEN})
    planned = plan(ask(fallback_models=(BACKUP,)), snapshot(main, backup), live=live)
    assert [r.endpoint_id for r in planned] == [backup.endpoint_id, main.endpoint_id]


# --- preferred_min_throughput / preferred_max_latency ----------------------------------------


def test_endpoints_missing_a_cutoff_are_tried_after_those_that_meet_it() -> None:
    cheap_slow, mid, dear_fast, unmeasured = (
        at("cheap-slow", "1"),
        at("mid", "2"),
        at("dear-fast", "3"),
        at("unmeasured", "4"),
    )
    live = FakeLive(
        stats={
            cheap_slow.endpoint_id: figures(throughput=flat(20, p90=15), ttft=flat(3.0, p90=9.0)),
            mid.endpoint_id: figures(throughput=flat(80, p90=30), ttft=flat(0.5, p90=4.0)),
            dear_fast.endpoint_id: figures(throughput=flat(150, p90=120), ttft=flat(0.2)),
        }
    )
    catalog = snapshot(cheap_slow, mid, dear_fast, unmeasured)
    # A number is the p50 cut-off: the slow one is demoted, unmeasured counts as meeting it.
    at_p50 = ask(sort="price", min_throughput=Cutoffs(p50=50))
    assert providers(plan(at_p50, catalog, live=live)) == [
        "mid",
        "dear-fast",
        "unmeasured",
        "cheap-slow",
    ]
    # p90 cut-offs read the p90 figure.
    at_p90 = ask(sort="price", min_throughput=Cutoffs(p90=100))
    assert providers(plan(at_p90, catalog, live=live)) == [
        "dear-fast",
        "unmeasured",
        "cheap-slow",
        "mid",
    ]
    latency = ask(sort="price", max_latency=Cutoffs(p50=1.0, p90=5.0))
    assert providers(plan(latency, catalog, live=live)) == [
        "mid",
        "dear-fast",
        "unmeasured",
        "cheap-slow",
    ]
    # Demoted, never dropped: with every endpoint missing, all are still planned.
    strict = ask(sort="price", max_latency=Cutoffs(p50=0.01))
    assert providers(plan(strict, catalog, live=live)) == [
        "unmeasured",
        "cheap-slow",
        "mid",
        "dear-fast",
    ]


def test_a_fallback_models_endpoint_that_meets_the_cutoffs_goes_before_one_that_misses() -> None:
    slow_main, fast_backup = at("a", "1"), at("b", "1", model=BACKUP)
    live = FakeLive(
        stats={
            slow_main.endpoint_id: figures(throughput=flat(10)),
            fast_backup.endpoint_id: figures(throughput=flat(100)),
        }
    )
    catalog = snapshot(slow_main, fast_backup)
    request = ask(fallback_models=(BACKUP,), min_throughput=Cutoffs(p50=50))
    planned = plan(request, catalog, live=live)
    assert [r.model_id for r in planned] == [BACKUP, MODEL]
    # Without the cut-off the requested model comes first, as always.
    assert [r.model_id for r in plan(ask(fallback_models=(BACKUP,)), catalog, live=live)] == [
        MODEL,
        BACKUP,
    ]


def test_cutoffs_keep_the_weighted_draw_within_each_group() -> None:
    a, b, slow = at("a", "1"), at("b", "2"), at("slow", "0.5")
    live = FakeLive(stats={slow.endpoint_id: figures(ttft=flat(10.0))})
    shares = first_shares(snapshot(a, b, slow), live, max_latency=Cutoffs(p50=2.0))
    assert set(shares) == {"a", "b"}
    assert shares["a"] == pytest.approx(0.8, abs=0.015)


# --- data policy filters ------------------------------------------------------------------------


def policy_catalog() -> Snapshot:
    return snapshot(
        at("keeps", "1", retains_prompts=True, quantization="fp8"),
        at("zdr", "2", zero_data_retention=True, quantization="bf16"),
        at("plain", "3", quantization=""),
    )


def test_data_collection_deny_drops_endpoints_that_retain_prompts() -> None:
    planned = plan(ask(sort="price", deny_data_collection=True), policy_catalog())
    assert providers(planned) == ["zdr", "plain"]


def test_zdr_keeps_only_zero_data_retention_endpoints() -> None:
    assert providers(plan(ask(zdr=True), policy_catalog())) == ["zdr"]


def test_quantizations_keep_only_the_listed_ones_and_skip_unknown() -> None:
    planned = plan(ask(sort="price", quantizations=frozenset({"fp8", "bf16"})), policy_catalog())
    assert providers(planned) == ["keeps", "zdr"]
    assert providers(plan(ask(quantizations=frozenset({"bf16"})), policy_catalog())) == ["zdr"]


@pytest.mark.parametrize(
    ("prefs", "named"),
    [
        ({"zdr": True, "only": frozenset({"keeps"})}, "provider.zdr"),
        ({"deny_data_collection": True, "only": frozenset({"keeps"})}, "provider.data_collection"),
        ({"quantizations": frozenset({"int4"})}, "provider.quantizations"),
        ({"zdr": True, "quantizations": frozenset({"fp8"})}, "provider.quantizations"),
    ],
)
def test_a_filter_that_leaves_nothing_is_named(prefs: dict[str, Any], named: str) -> None:
    with pytest.raises(NotFound) as none:
        plan(ask(**prefs), policy_catalog())
    error = none.value
    assert error.reason == "NO_ENDPOINT_MATCHES"
    assert error.metadata == {"model": MODEL, "filter": named}
    assert named in error.message


def test_a_fallback_model_that_passes_the_filters_serves() -> None:
    catalog = snapshot(
        at("keeps", "1", retains_prompts=True),
        at("zdr", "5", model=BACKUP, zero_data_retention=True),
    )
    planned = plan(ask(zdr=True, fallback_models=(BACKUP,)), catalog)
    assert [r.model_id for r in planned] == [BACKUP]


def test_the_key_rules_keep_the_live_order_and_pass_the_view_through() -> None:
    a, b, c = at("a", "1"), at("b", "2"), at("c", "3")
    live = FakeLive(breakers={a.endpoint_id: OPEN})
    rules = KeyRules(providers=frozenset({"a", "c"}))
    planned = allowed_plan(rules, ask(sort="price"), snapshot(a, b, c), live=live)
    assert providers(planned) == ["c", "a"]
    # Dropping a provider after the draw leaves the others weighted as a draw among them.
    rng = random.Random(9)
    leaders = Counter(
        allowed_plan(rules, ask(), snapshot(a, b, c), rng=rng)[0].provider_id for _ in range(10_000)
    )
    assert leaders["a"] / 10_000 == pytest.approx(9 / 10, abs=0.015)  # 1 : 1/9


def test_an_unknown_fallback_is_still_named_first() -> None:
    with pytest.raises(InvalidArgument):
        plan(ask(fallback_models=("acme/none",)), policy_catalog())
