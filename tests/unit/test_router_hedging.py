"""Which hedging a request gets (request, else model, else router), the delay of one attempt
(fixed, or live time to first token), the model defaults the snapshot carries, the reservation
of a hedged request, and the hold that settles to the sum of its attempts."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from switchboard.catalog.v1 import catalog_pb2
from switchboard.common.v1 import common_pb2
from switchboard_core.budget import Reservation
from switchboard_core.pricing import PriceSheet
from switchboard_router.admission import worst_case_cost
from switchboard_router.canonical import (
    NO_HEDGE,
    CompletionRequest,
    HedgePolicy,
    Message,
    ProviderPrefs,
    Role,
)
from switchboard_router.catalog_cache import Route, Snapshot
from switchboard_router.config import RouterConfig
from switchboard_router.endpoint_stats import NO_LIVE_VIEW, Figures, Percentiles
from switchboard_router.generation import Hold
from switchboard_router.hedging import HEDGE_OFF, HedgeDefaults, hedge_delay, resolve

Hedging = common_pb2.Hedging
BASE = {"REDIS_URL": "redis://127.0.0.1:6379/0", "SWITCHBOARD_INSECURE_PLAINTEXT": "true"}


def asking(model: str = "x/y", hedge: HedgePolicy | None = None) -> CompletionRequest:
    return CompletionRequest(
        model=model,
        messages=(Message.of(Role.USER, "hi"),),
        max_tokens=100,
        provider=ProviderPrefs(hedge=hedge),
    )


FIXED = HedgePolicy(enabled=True, delay=0.5)
MODEL = HedgePolicy(enabled=True, delay=1.5)
ROUTER = HedgeDefaults(HedgePolicy(enabled=True, delay=2.0, percentile=90), 2.0)


def test_the_request_wins_then_the_model_then_the_router() -> None:
    models = {"x/y": MODEL}
    assert resolve(asking(hedge=FIXED), models, ROUTER) == FIXED
    assert resolve(asking(), models, ROUTER) == MODEL
    assert resolve(asking("other/model"), models, ROUTER) == ROUTER.policy
    assert resolve(asking(), {}, HEDGE_OFF) == NO_HEDGE


def test_off_at_a_level_stops_there() -> None:
    off = HedgePolicy(enabled=False)
    assert resolve(asking(hedge=off), {"x/y": MODEL}, ROUTER) == off
    assert resolve(asking(), {"x/y": off}, ROUTER) == off


def test_a_variant_resolves_by_its_model_id() -> None:
    assert resolve(asking("x/y:nitro"), {"x/y": MODEL}, ROUTER) == MODEL


def test_a_live_policy_without_a_delay_takes_the_routers() -> None:
    live = HedgePolicy(enabled=True, delay=0.0, percentile=75)
    assert resolve(asking(hedge=live), {}, HedgeDefaults(NO_HEDGE, 3.0)) == HedgePolicy(
        enabled=True, delay=3.0, percentile=75
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("off", NO_HEDGE),
        ("fixed", HedgePolicy(enabled=True, delay=0.75)),
        ("live", HedgePolicy(enabled=True, delay=0.75, percentile=75)),
    ],
)
def test_the_routers_default_comes_from_its_settings(mode: str, expected: HedgePolicy) -> None:
    config = RouterConfig.from_env(
        {
            **BASE,
            "SWITCHBOARD_HEDGE_MODE": mode,
            "SWITCHBOARD_HEDGE_DELAY_SECONDS": "0.75",
            "SWITCHBOARD_HEDGE_PERCENTILE": "75",
        }
    )
    assert HedgeDefaults.of(config) == HedgeDefaults(expected, 0.75)


class Stats:
    def __init__(self, figures: Figures | None) -> None:
        self._figures = figures

    def figures(self, endpoint_id: str) -> Figures | None:
        return self._figures

    def breaker(self, endpoint_id: str) -> str:
        return "closed"

    def allows(self, endpoint_id: str) -> bool:
        return True


TTFT = Percentiles(p50=0.2, p75=0.4, p90=0.9, p99=3.0)


def test_the_delay_is_fixed_or_the_live_percentile_falling_back_to_the_fixed_one() -> None:
    live = HedgePolicy(enabled=True, delay=2.0, percentile=90)
    measured = Stats(Figures(300, 50, 0, 0, TTFT, None))
    assert hedge_delay(NO_HEDGE, measured, "e") is None
    assert hedge_delay(FIXED, measured, "e") == 0.5
    assert hedge_delay(live, measured, "e") == 0.9
    assert hedge_delay(dataclasses.replace(live, percentile=50), measured, "e") == 0.2
    assert hedge_delay(live, NO_LIVE_VIEW, "e") == 2.0  # no figures yet
    assert hedge_delay(live, Stats(Figures(300, 2, 0, 0, None, None)), "e") == 2.0  # too few
    instant = Stats(Figures(300, 50, 0, 0, Percentiles(0, 0, 0.001, 0.002), None))
    assert hedge_delay(live, instant, "e") == 0.01  # never below the floor


def catalog(*hedges: common_pb2.Hedging | None) -> catalog_pb2.WatchCatalogResponse:
    models = []
    for i, hedging in enumerate(hedges):
        model = catalog_pb2.Model(id=f"m/{i}", context_length=8192)
        if hedging is not None:
            model.hedge.CopyFrom(hedging)
        models.append(model)
    return catalog_pb2.WatchCatalogResponse(version=1, models=models)


def test_the_snapshot_carries_the_models_that_set_a_default() -> None:
    snapshot = Snapshot.from_proto(
        catalog(
            None,
            Hedging(mode=Hedging.MODE_UNSPECIFIED),
            Hedging(mode=Hedging.MODE_OFF),
            Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=400),
            Hedging(mode=Hedging.MODE_LIVE_TTFT, ttft_percentile=75),
        )
    )
    assert snapshot.hedges == {
        "m/2": HedgePolicy(enabled=False),
        "m/3": HedgePolicy(enabled=True, delay=0.4),
        "m/4": HedgePolicy(enabled=True, delay=0.0, percentile=75),
    }
    # The live one without a delay gets the router's when resolved.
    assert resolve(asking("m/4"), snapshot.hedges, ROUTER).delay == 2.0


def test_a_model_default_that_breaks_the_rules_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    snapshot = Snapshot.from_proto(
        catalog(
            Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=5),  # below 10 ms
            Hedging(mode=Hedging.MODE_FIXED_DELAY),  # no delay
            Hedging(mode=Hedging.MODE_OFF, ttft_percentile=90),  # a percentile without live
        )
    )
    assert snapshot.hedges == {}
    assert sum("model hedging ignored" in r.getMessage() for r in caplog.records) == 3


def route(provider: str, completion: str) -> Route:
    return Route(
        endpoint_id=f"{provider}:x/y",
        model_id="x/y",
        provider_id=provider,
        api_format=1,
        base_url="http://x.invalid/v1",
        dialect=provider,
        upstream_model="m",
        price=PriceSheet.flat("1", completion),
        context_length=8192,
        max_completion_tokens=1000,
        supported_parameters=frozenset(),
    )


def test_a_hedged_request_reserves_its_two_dearest_attempts() -> None:
    routes = [route("a", "2"), route("b", "8"), route("c", "4")]
    one = {r.provider_id: worst_case_cost(asking(), [r], 4096) for r in routes}
    assert worst_case_cost(asking(), routes, 4096) == one["b"]
    assert worst_case_cost(asking(), routes, 4096, hedged=True) == one["b"] + one["c"]
    assert worst_case_cost(asking(), routes[:1], 4096, hedged=True) == one["a"]


def test_a_hold_settles_once_every_attempt_is_known_and_none_can_start() -> None:
    hold = Hold(Reservation("r1", "k", "a", Decimal("1")))
    hold.expect()  # the loser, metered in the background
    hold.expect()  # the winner
    assert not hold.close()
    assert not hold.add(Decimal("0.004"))
    assert hold.add(Decimal("0.001"))
    assert hold.spent == Decimal("0.005") and hold.settled
    assert not hold.add(Decimal(0)) and not hold.close()  # once

    nothing = Hold(Reservation("r2", "k", "a", Decimal("1")))
    assert nothing.close() and nothing.spent == 0  # no attempt metered: released
