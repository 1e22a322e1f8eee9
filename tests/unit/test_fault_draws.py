"""The fakes' fault draws (tests/fakes/faults.py): seeded, in the shares asked, bounded.

The benchmark and the e2e tests rely on these: a seed gives the same outcomes every run, a
30% error rate fails close to 30% of requests, a burst fails exactly the first N, and nonsense
settings are refused rather than silently played.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fakes.faults import NO_FAULTS, FaultInjector, Faults


def outcomes(faults: Faults, count: int) -> list[str]:
    injector = FaultInjector()
    injector.reset(faults)
    return [injector.draw().outcome for _ in range(count)]


def test_no_faults_means_every_request_is_answered() -> None:
    assert set(outcomes(NO_FAULTS, 200)) == {"ok"}
    fault = FaultInjector().draw()
    assert (fault.first_token_delay(), fault.chunk_gap()) == (0.0, 0.0)


def test_the_same_seed_gives_the_same_outcomes_and_another_seed_others() -> None:
    faults = Faults(seed=7, error_rate=0.3, reset_rate=0.1, hang_rate=0.1, stall_rate=0.1)
    first = outcomes(faults, 300)
    assert first == outcomes(faults, 300)
    assert first != outcomes(Faults(seed=8, error_rate=0.3, reset_rate=0.1), 300)


def test_rates_are_shares_of_requests() -> None:
    faults = Faults(seed=1, error_rate=0.3, reset_rate=0.1, hang_rate=0.05, stall_rate=0.05)
    counts = Counter(outcomes(faults, 10_000))
    assert counts["error"] == pytest.approx(3000, abs=200)
    assert counts["reset"] == pytest.approx(1000, abs=120)
    assert counts["hang"] == pytest.approx(500, abs=90)
    assert counts["stall"] == pytest.approx(500, abs=90)
    assert counts["ok"] == pytest.approx(5000, abs=200)


def test_a_burst_fails_exactly_the_first_requests_then_the_rates_apply() -> None:
    drawn = outcomes(Faults(burst=5), 50)
    assert drawn[:5] == ["error"] * 5
    assert set(drawn[5:]) == {"ok"}


def test_switching_faults_restarts_the_draw_and_the_counts() -> None:
    injector = FaultInjector()
    injector.reset(Faults(burst=2))
    assert [injector.draw().outcome for _ in range(3)] == ["error", "error", "ok"]
    injector.reset(Faults(burst=1))
    assert injector.draw().outcome == "error"
    assert injector.outcomes == Counter({"error": 1})


def test_delays_vary_within_the_jitter_and_are_exact_without_it() -> None:
    injector = FaultInjector()
    injector.reset(Faults(first_token_delay=2.0, chunk_gap=0.02))
    fault = injector.draw()
    assert (fault.first_token_delay(), fault.chunk_gap()) == (2.0, 0.02)
    injector.reset(Faults(seed=3, first_token_delay=2.0, chunk_gap=0.02, jitter=0.25))
    gaps = [injector.draw().chunk_gap() for _ in range(500)]
    assert all(0.015 <= gap <= 0.025 for gap in gaps)
    assert len(set(gaps)) > 400  # they do vary
    delays = [injector.draw().first_token_delay() for _ in range(500)]
    assert all(1.5 <= delay <= 2.5 for delay in delays)


def test_a_stream_s_delays_do_not_depend_on_other_requests_draws() -> None:
    """Each request gets its own RNG: interleaving streams does not change their spacing."""
    faults = Faults(seed=5, chunk_gap=0.01, jitter=0.5)
    injector = FaultInjector()
    injector.reset(faults)
    a, b = injector.draw(), injector.draw()
    interleaved = [(a.chunk_gap(), b.chunk_gap()) for _ in range(10)]
    injector.reset(faults)
    a, b = injector.draw(), injector.draw()
    assert [a.chunk_gap() for _ in range(10)] == [x for x, _ in interleaved]
    assert [b.chunk_gap() for _ in range(10)] == [y for _, y in interleaved]


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"error_rate": 1.5}, "rates"),
        ({"error_rate": -0.1}, "rates"),
        ({"error_rate": 0.6, "reset_rate": 0.6}, "together at most 1"),
        ({"error_status": 200}, "error_status"),
        ({"error_status": 600}, "error_status"),
        ({"burst": -1}, "counts"),
        ({"stall_after": -1}, "counts"),
        ({"first_token_delay": -1.0}, "delays"),
        ({"chunk_gap": 1e9}, "delays"),
        ({"jitter": 2.0}, "jitter"),
    ],
)
def test_nonsense_settings_are_refused(settings: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Faults(**settings)  # type: ignore[arg-type]
