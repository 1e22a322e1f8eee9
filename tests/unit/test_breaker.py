"""The circuit breaker's state machine, on an injected clock: it opens on a run of failures
or on the window's failure rate, a 429's Retry-After cools the endpoint down, it turns
half-open when the open time is over, lets only probe-token holders through, closes on a
success and opens again on a failure; what it shares and adopts, and what it logs."""

from __future__ import annotations

import logging

import pytest

from switchboard_router import metrics
from switchboard_router.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerPolicy,
    Closing,
    Opening,
    Window,
)

POLICY = BreakerPolicy(
    window_seconds=30,
    min_requests=10,
    failure_rate=0.5,
    consecutive_failures=3,
    open_seconds=30,
    probes=2,
    max_cooldown_seconds=300,
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    """A breaker, its clock and the window counts it reads."""

    def __init__(self, policy: BreakerPolicy = POLICY, endpoint: str = "ep-1") -> None:
        self.clock = Clock()
        self.window: dict[int, tuple[int, int]] = {}
        self.breaker = Breaker(endpoint, policy, self.clock, self.counts)

    def counts(self) -> Window:
        return dict(self.window)

    def open_for(self) -> float:
        opening = self.breaker.opening
        assert opening is not None
        return opening.until - self.clock.now


def transitions(endpoint: str, state: str, cause: str) -> float:
    return float(metrics.BREAKER_TRANSITIONS.labels(endpoint, state, cause)._value.get())


def test_a_run_of_failures_opens_it_and_a_success_in_between_resets_the_run() -> None:
    h = Harness(endpoint="ep-run")
    h.breaker.failed()
    h.breaker.failed()
    h.breaker.succeeded()
    h.breaker.failed()
    h.breaker.failed()
    assert h.breaker.state == CLOSED and h.breaker.allows()
    h.breaker.failed()
    assert h.breaker.state == OPEN
    assert not h.breaker.allows()
    assert h.open_for() == 30
    assert isinstance(h.breaker.unshared, Opening)
    assert h.breaker.unshared.cause == "consecutive_failures"
    assert transitions("ep-run", OPEN, "consecutive_failures") == 1


def test_the_failure_rate_opens_it_once_enough_attempts_were_made() -> None:
    policy = BreakerPolicy(consecutive_failures=100, min_requests=10, failure_rate=0.5)
    h = Harness(policy)
    h.window = {1: (5, 5)}  # every attempt failed, but too few to judge by
    h.breaker.failed()
    assert h.breaker.state == CLOSED
    h.window = {1: (6, 4), 2: (4, 0)}  # 4 failures in 10: below the rate
    h.breaker.judge()
    assert h.breaker.state == CLOSED
    h.window = {1: (6, 4), 2: (4, 1)}  # 5 in 10: at the rate
    h.breaker.judge()
    assert h.breaker.state == OPEN
    assert h.breaker.opening is not None and h.breaker.opening.cause == "failure_rate"


def test_failures_before_a_close_do_not_count_after_it() -> None:
    policy = BreakerPolicy(consecutive_failures=100, min_requests=4, failure_rate=0.5)
    h = Harness(policy)
    h.window = {1: (4, 4)}
    h.breaker.judge()
    assert h.breaker.state == OPEN
    h.clock.now += 30
    h.breaker.grant_local_probe()  # nothing wanted one yet: nothing granted
    assert not h.breaker.allows()  # half-open, no token: wanted
    h.breaker.grant_local_probe()
    assert h.breaker.allows()
    h.window = {1: (5, 4)}  # the probe's attempt, a success
    h.breaker.succeeded()
    assert h.breaker.state == CLOSED
    h.breaker.judge()  # 4 failures in 5 attempts in the window, but all before the close
    assert h.breaker.state == CLOSED
    h.window = {1: (5, 4), 2: (4, 2)}  # after it: 2 in 4
    h.breaker.judge()
    assert h.breaker.state == OPEN
    h.window = {2: (4, 2)}  # bucket 1 left the window: its baseline goes with it
    assert h.breaker._counts() == (4, 2)


def test_half_open_lets_only_probe_token_holders_through_and_closes_on_a_success() -> None:
    h = Harness(endpoint="ep-half")
    for _ in range(3):
        h.breaker.failed()
    epoch = h.breaker.opening.epoch if h.breaker.opening else 0
    h.clock.now += 29.9
    assert h.breaker.state == OPEN and not h.breaker.wants_probe
    h.clock.now += 0.1
    assert h.breaker.state == HALF_OPEN
    assert transitions("ep-half", HALF_OPEN, "open_elapsed") == 1
    assert not h.breaker.wants_probe  # no request asked yet: no token claimed for nothing
    assert not h.breaker.allows()
    assert h.breaker.wants_probe
    h.breaker.grant_probe(epoch - 1)  # a token of an older opening: not this one's
    assert not h.breaker.allows()
    h.breaker.grant_probe(epoch)
    assert not h.breaker.wants_probe
    assert h.breaker.allows()  # the probe
    assert not h.breaker.allows()  # one token, one request
    h.breaker.succeeded()
    assert h.breaker.state == CLOSED and h.breaker.allows()
    assert h.breaker.unshared == Closing(epoch)
    assert transitions("ep-half", CLOSED, "probe_succeeded") == 1


def test_a_failed_probe_opens_it_again_under_a_new_epoch() -> None:
    h = Harness()
    for _ in range(3):
        h.breaker.failed()
    first = h.breaker.opening
    assert first is not None
    h.clock.now += 30
    h.breaker.allows()
    h.breaker.grant_local_probe()
    assert h.breaker.allows()
    h.breaker.failed()
    second = h.breaker.opening
    assert second is not None and second.epoch > first.epoch
    assert second.cause == "probe_failed"
    assert h.breaker.state == OPEN and h.open_for() == 30


def test_local_probe_tokens_are_at_most_the_policy_s_per_opening() -> None:
    h = Harness()  # probes=2
    for _ in range(3):
        h.breaker.failed()
    h.clock.now += 30
    granted = 0
    for _ in range(5):
        h.breaker.allows()
        h.breaker.grant_local_probe()
        granted += h.breaker.allows()
    assert granted == 2


def test_a_429_with_retry_after_cools_the_endpoint_down_for_that_long_capped() -> None:
    h = Harness()
    h.breaker.cool_down(12)
    assert h.breaker.state == OPEN and h.open_for() == 12
    assert h.breaker.opening is not None and h.breaker.opening.cause == "rate_limited"
    h.breaker.cool_down(5)  # a shorter one does not shorten it
    assert h.open_for() == 12
    h.breaker.cool_down(3600)  # a longer one extends it, up to the cap
    assert h.open_for() == 300
    h.clock.now += 300
    assert h.breaker.state == HALF_OPEN
    h.breaker.cool_down(0)  # no time given: an ordinary failure (a probe's: open again)
    assert h.breaker.state == OPEN and h.open_for() == 30


def test_failures_while_open_change_nothing() -> None:
    h = Harness()
    h.breaker.cool_down(10)
    opening = h.breaker.opening
    for _ in range(10):
        h.breaker.failed()
    h.breaker.succeeded()  # an attempt sent before it opened answered late
    assert h.breaker.opening is opening


def test_another_router_s_opening_is_adopted_and_its_disappearance_closes_it() -> None:
    h = Harness(endpoint="ep-shared")
    theirs = Opening(epoch=5, until=h.clock.now + 20, cause="failure_rate")
    h.breaker.adopt(theirs)
    assert h.breaker.state == OPEN and h.breaker.unshared is None
    assert transitions("ep-shared", OPEN, "shared") == 1
    h.breaker.adopt(theirs)  # read again: nothing new
    assert transitions("ep-shared", OPEN, "shared") == 1
    h.breaker.adopt(None)  # the router whose probe succeeded deleted it
    assert h.breaker.state == CLOSED and h.breaker.unshared is None
    assert transitions("ep-shared", CLOSED, "shared") == 1
    # Half-open read from Redis (another router's opening whose time is over).
    h.breaker.adopt(Opening(epoch=6, until=h.clock.now - 1, cause="x"))
    assert h.breaker.state == HALF_OPEN
    h.clock.now += POLICY.half_open_seconds
    h.breaker.adopt(None)  # expired unjudged
    assert h.breaker.state == CLOSED
    assert transitions("ep-shared", CLOSED, "expired") == 1


def test_its_own_unwritten_change_goes_before_what_redis_holds() -> None:
    h = Harness()
    for _ in range(3):
        h.breaker.failed()
    mine = h.breaker.unshared
    assert isinstance(mine, Opening)
    h.breaker.adopt(None)  # not written yet: Redis has nothing, that does not close it
    assert h.breaker.state == OPEN
    h.breaker.written(mine, mine)
    assert h.breaker.unshared is None
    h.breaker.adopt(None)  # written, then gone: closed elsewhere
    assert h.breaker.state == CLOSED


def test_a_longer_opening_redis_kept_replaces_its_own() -> None:
    h = Harness()
    for _ in range(3):
        h.breaker.failed()
    mine = h.breaker.unshared
    assert isinstance(mine, Opening)
    theirs = Opening(epoch=1, until=h.clock.now + 250, cause="rate_limited")
    h.breaker.written(mine, theirs)
    assert h.breaker.opening == theirs and h.open_for() == 250


def test_an_opening_round_trips_through_its_stored_form() -> None:
    opening = Opening(epoch=1_800_000_000_123, until=1_800_000_030.123, cause="probe_failed")
    assert Opening.decode(opening.encode().encode()) == opening
    assert Opening.decode(None) is None
    assert Opening.decode(b"garbage") is None
    assert Opening.decode("12 x y") is None


def test_state_changes_are_logged_with_the_endpoint_and_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(endpoint="ep-logged")
    with caplog.at_level(logging.INFO, logger="switchboard_router.breaker"):
        h.breaker.cool_down(7)
        h.clock.now += 7
        assert h.breaker.state == HALF_OPEN
    opened, half = caplog.records
    assert opened.getMessage() == "circuit breaker open" and opened.levelno == logging.WARNING
    assert (opened.endpoint, opened.cause, opened.open_seconds) == ("ep-logged", "rate_limited", 7)  # type: ignore[attr-defined]
    assert half.getMessage() == "circuit breaker half-open"
