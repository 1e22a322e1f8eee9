"""The ``provider`` object's data policy, performance and hedging fields: good values become
canonical preferences, bad ones are refused naming each field."""

from __future__ import annotations

import math

import pytest

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2
from switchboard_core.errors import InvalidArgument
from switchboard_router.canonical import Cutoffs, HedgePolicy
from switchboard_router.provider_prefs import MAX_QUANTIZATIONS, hedge_policy
from switchboard_router.requests import parse_request

Hedging = common_pb2.Hedging
Cut = router_pb2.PerformanceCutoffs


def with_provider(**fields: object) -> router_pb2.StreamCompletionRequest:
    return router_pb2.StreamCompletionRequest(
        model="openai/gpt-4o-mini",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")],
        provider=router_pb2.ProviderPreferences(**fields),  # type: ignore[arg-type]
    )


def violations(**fields: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse_request(with_provider(**fields))
    return dict(caught.value.violations)


def test_the_fields_become_canonical_preferences() -> None:
    parsed = parse_request(
        with_provider(
            data_collection=router_pb2.DATA_COLLECTION_DENY,
            zdr=True,
            quantizations=["fp8", "bf16", "int4", "q4_k-m", "q4.0"],
            preferred_min_throughput=Cut(p50=100),
            preferred_max_latency=Cut(p50=1.5, p90=3, p99=10),
            hedge=Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=750),
        )
    ).provider
    assert parsed.deny_data_collection and parsed.zdr
    assert parsed.quantizations == {"fp8", "bf16", "int4", "q4_k-m", "q4.0"}
    assert parsed.min_throughput == Cutoffs(p50=100)
    assert parsed.max_latency == Cutoffs(p50=1.5, p90=3, p99=10)
    assert parsed.hedge == HedgePolicy(enabled=True, delay=0.75, percentile=0)


def test_unset_fields_change_nothing() -> None:
    parsed = parse_request(
        with_provider(data_collection=router_pb2.DATA_COLLECTION_ALLOW, preferred_max_latency=Cut())
    ).provider
    assert not parsed.deny_data_collection and not parsed.zdr
    assert parsed.quantizations == frozenset()
    assert parsed.min_throughput is None and parsed.max_latency is None  # no value set
    assert parsed.hedge is None  # inherit the model's, else the router's


def test_hedge_modes() -> None:
    assert hedge_policy(Hedging(mode=Hedging.MODE_OFF)) == HedgePolicy(enabled=False)
    assert hedge_policy(Hedging()) is None
    live = hedge_policy(Hedging(mode=Hedging.MODE_LIVE_TTFT))
    assert live == HedgePolicy(enabled=True, delay=0.0, percentile=90)  # 0 delay: the router's
    tuned = hedge_policy(Hedging(mode=Hedging.MODE_LIVE_TTFT, delay_ms=10, ttft_percentile=75))
    assert tuned == HedgePolicy(enabled=True, delay=0.01, percentile=75)
    off = parse_request(with_provider(hedge=Hedging(mode=Hedging.MODE_OFF))).provider
    assert off.hedge == HedgePolicy(enabled=False)


@pytest.mark.parametrize("value", [0.0, -1.0, 1e6 + 1, math.inf, -math.inf, math.nan])
def test_bad_cutoffs_are_refused_naming_the_percentile(value: float) -> None:
    found = violations(
        preferred_min_throughput=Cut(p50=10, p75=value),
        preferred_max_latency=Cut(p90=value, p99=2),
    )
    assert set(found) == {
        "provider.preferred_min_throughput.p75",
        "provider.preferred_max_latency.p90",
    }
    assert "at most 1,000,000" in found["provider.preferred_max_latency.p90"]


def test_cutoffs_at_the_bounds_are_accepted() -> None:
    parsed = parse_request(
        with_provider(preferred_min_throughput=Cut(p50=1e6), preferred_max_latency=Cut(p99=1e-9))
    ).provider
    assert parsed.min_throughput == Cutoffs(p50=1e6)
    assert parsed.max_latency == Cutoffs(p99=1e-9)


def test_bad_quantizations_are_refused_naming_each_entry() -> None:
    found = violations(quantizations=["fp8", "FP16", "", "a" * 33, "fp8", ".q4"])
    assert set(found) == {
        "provider.quantizations[1]",
        "provider.quantizations[2]",
        "provider.quantizations[3]",
        "provider.quantizations[4]",
        "provider.quantizations[5]",
    }
    assert "given twice" in found["provider.quantizations[4]"]
    too_many = violations(quantizations=[f"q{i}" for i in range(MAX_QUANTIZATIONS + 1)])
    assert too_many == {"provider.quantizations": f"at most {MAX_QUANTIZATIONS}"}
    assert parse_request(with_provider(quantizations=["a" * 32])).provider.quantizations


def test_an_unknown_data_collection_value_is_refused() -> None:
    assert violations(data_collection=9) == {"provider.data_collection": "unknown value"}


@pytest.mark.parametrize(
    ("hedge", "field"),
    [
        (Hedging(mode=9), "provider.hedge.mode"),  # type: ignore[arg-type]
        (Hedging(mode=Hedging.MODE_FIXED_DELAY), "provider.hedge.delay_ms"),
        (Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=9), "provider.hedge.delay_ms"),
        (Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=60_001), "provider.hedge.delay_ms"),
        (Hedging(mode=Hedging.MODE_LIVE_TTFT, delay_ms=5), "provider.hedge.delay_ms"),
        (
            Hedging(mode=Hedging.MODE_LIVE_TTFT, ttft_percentile=49),
            "provider.hedge.ttft_percentile",
        ),
        (
            Hedging(mode=Hedging.MODE_LIVE_TTFT, ttft_percentile=100),
            "provider.hedge.ttft_percentile",
        ),
        (
            Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=100, ttft_percentile=90),
            "provider.hedge.ttft_percentile",
        ),
        (Hedging(delay_ms=100), "provider.hedge.delay_ms"),  # a delay without a mode
        (Hedging(mode=Hedging.MODE_OFF, ttft_percentile=90), "provider.hedge.ttft_percentile"),
    ],
)
def test_bad_hedging_is_refused_naming_the_field(hedge: common_pb2.Hedging, field: str) -> None:
    assert list(violations(hedge=hedge)) == [field]


def test_hedging_at_the_bounds_is_accepted() -> None:
    for hedge in (
        Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=10),
        Hedging(mode=Hedging.MODE_FIXED_DELAY, delay_ms=60_000),
        Hedging(mode=Hedging.MODE_LIVE_TTFT, delay_ms=60_000, ttft_percentile=50),
        Hedging(mode=Hedging.MODE_LIVE_TTFT, ttft_percentile=99),
    ):
        assert parse_request(with_provider(hedge=hedge)).provider.hedge is not None


def test_every_bad_provider_field_is_named_at_once() -> None:
    found = violations(
        sort=9,
        zdr=True,
        quantizations=["BAD"],
        preferred_max_latency=Cut(p50=-1),
        hedge=Hedging(mode=Hedging.MODE_FIXED_DELAY),
    )
    assert set(found) == {
        "provider.sort",
        "provider.quantizations[0]",
        "provider.preferred_max_latency.p50",
        "provider.hedge.delay_ms",
    }
