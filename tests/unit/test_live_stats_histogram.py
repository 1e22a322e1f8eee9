"""Live statistics' histograms: routers' counts add up bucket by bucket, and a percentile read
off the merged counts is within one bucket of the exact one, however the samples were split
between routers. Also: a bucket's Redis hash round-trips, and what an error says about the
endpoint comes from one table."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from switchboard_router.endpoint_stats import (
    ANSWERED,
    FAILED,
    RATE_LIMITED,
    TIMEOUT,
    Figures,
    outcome,
)
from switchboard_router.providers.base import (
    UpstreamBadRequest,
    UpstreamContextLengthExceeded,
    UpstreamCredentialRejected,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamStalled,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_status,
)
from switchboard_router.stats_histogram import (
    STEPS_PER_DOUBLING,
    THROUGHPUT_SCALE,
    TTFT_SCALE,
    LogScale,
    merged,
)
from switchboard_router.stats_store import Series, Tally

STEP = 2 ** (1 / STEPS_PER_DOUBLING)
seconds = st.floats(min_value=0.011, max_value=500.0, allow_nan=False)


def histogram(scale: LogScale, values: list[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for value in values:
        index = scale.index(value)
        out[index] = out.get(index, 0) + 1
    return out


def exact(values: list[float], share: float) -> float:
    """The sample percentile the histogram estimates: the smallest value with at least
    ``share`` of the samples at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def test_bucket_bounds_grow_by_a_fixed_ratio_and_clamp_at_the_ends() -> None:
    scale = TTFT_SCALE
    assert scale.index(0.0) == 0 and scale.index(0.0099) == 0 and scale.index(float("nan")) == 0
    assert scale.index(0.01) == 1
    assert scale.index(1e9) == scale.index(float("inf")) == scale.top
    for index in range(1, scale.top):
        lower, upper = scale.bound(index - 1), scale.bound(index)
        assert math.isclose(upper / lower, STEP)
        assert scale.index(lower * 1.0001) == index
        assert scale.index(upper * 0.9999) == index
    assert scale.bound(scale.top - 1) >= scale.high
    assert THROUGHPUT_SCALE.top == 63 and TTFT_SCALE.top == 65


@given(st.lists(seconds, min_size=1, max_size=200), st.lists(seconds, max_size=200))
def test_two_routers_histograms_add_up_to_the_histogram_of_all_samples(
    first: list[float], second: list[float]
) -> None:
    together = merged([histogram(TTFT_SCALE, first), histogram(TTFT_SCALE, second)])
    assert together == histogram(TTFT_SCALE, first + second)
    assert TTFT_SCALE.percentiles(together) == TTFT_SCALE.percentiles(
        histogram(TTFT_SCALE, first + second)
    )


@given(st.lists(seconds, min_size=1, max_size=300), st.integers(min_value=1, max_value=5))
def test_percentiles_from_the_merged_histogram_are_within_one_bucket_of_exact(
    values: list[float], routers: int
) -> None:
    parts = [histogram(TTFT_SCALE, values[i::routers]) for i in range(routers)]
    found = TTFT_SCALE.percentiles(merged(parts))
    assert found is not None
    for estimate, share in zip(found, (0.5, 0.75, 0.9, 0.99), strict=True):
        truth = exact(values, share)
        assert truth / STEP <= estimate <= truth * STEP, (share, truth, estimate)
    assert list(found) == sorted(found)


def test_percentiles_need_enough_samples_and_clamp_outliers() -> None:
    assert TTFT_SCALE.percentiles({}) is None
    assert TTFT_SCALE.percentiles({TTFT_SCALE.index(0.2): 4}, minimum=5) is None
    assert TTFT_SCALE.percentiles({TTFT_SCALE.index(0.2): 5}, minimum=5) is not None
    assert TTFT_SCALE.percentiles({0: 3}) == (0.01, 0.01, 0.01, 0.01)
    top = TTFT_SCALE.bound(TTFT_SCALE.top - 1)
    assert TTFT_SCALE.percentiles({TTFT_SCALE.top: 3}) == (top, top, top, top)
    # Unknown bucket indexes (a router with another scale) and zero counts are ignored.
    assert TTFT_SCALE.percentiles({999: 5, -1: 5, 3: 0}) is None


def test_a_bucket_hash_round_trips_and_ignores_fields_it_does_not_know() -> None:
    tally = Tally(
        requests=7, failures=3, timeouts=1, rate_limited=2, ttft={4: 5}, throughput={9: 2}
    )
    raw = {k.encode(): str(v).encode() for k, v in tally.fields().items()}
    assert Tally.parse(raw) == tally
    raw[b"x"] = b"1"
    raw[b"t"] = b"2"
    raw[b"n"] = b"not a number"
    parsed = Tally.parse(raw)
    assert parsed.requests == 0 and parsed.ttft == {4: 5}
    assert Tally().fields() == {} and Tally().empty


def test_a_series_sums_final_buckets_once_and_forgets_those_past_the_window() -> None:
    series = Series()
    series.store(10, Tally(requests=2, ttft={3: 2}), final=True)
    series.store(10, Tally(requests=2, ttft={3: 2}), final=True)  # read again: counted once
    series.store(11, Tally(requests=1), final=False)
    series.store(11, Tally(requests=4, failures=1), final=False)  # replaced, not added
    assert series.total() == Tally(requests=6, failures=1, ttft={3: 2})
    assert series.final_upto == 10
    series.prune(11)
    assert series.total() == Tally(requests=4, failures=1)
    assert series.final_sum == Tally()
    series.prune(12)
    assert series.empty


def test_what_an_error_says_about_the_endpoint() -> None:
    cases: list[tuple[UpstreamError, str]] = [
        (UpstreamUnavailable("x", provider_id="p"), FAILED),
        (error_for_status(503, "x", provider_id="p"), FAILED),
        (UpstreamStalled("p", "first_byte", 1.0), TIMEOUT),
        (UpstreamTimeout("x", provider_id="p"), TIMEOUT),
        (error_for_status(408, "x", provider_id="p"), TIMEOUT),
        (UpstreamRateLimited("x", provider_id="p"), RATE_LIMITED),
        (UpstreamBadRequest("x", provider_id="p"), ANSWERED),
        (UpstreamContextLengthExceeded("x", provider_id="p"), ANSWERED),
        (error_for_status(413, "x", provider_id="p"), ANSWERED),
        (UpstreamCredentialRejected("x", provider_id="p"), FAILED),
        (UpstreamNotFound("x", provider_id="p"), FAILED),
        (UpstreamProtocolError("x", provider_id="p"), FAILED),
        (UpstreamError("x", provider_id="p"), FAILED),
    ]
    for error, expected in cases:
        assert outcome(error) == expected, type(error).__name__


def test_uptime_is_the_share_of_attempts_that_did_not_fail() -> None:
    figures = Figures(300, requests=8, failures=2, rate_limited=1, ttft=None, throughput=None)
    assert figures.uptime == 0.75
    assert Figures(300, 0, 0, 0, None, None).uptime == 1.0
    assert Figures(300, 1, 3, 0, None, None).uptime == 0.0  # started streams cut later count
