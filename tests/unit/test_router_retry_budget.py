"""The retry budget (Finagle's): first attempts deposit, extra attempts withdraw 1/ratio of a
deposit, a reserve of min_per_second over the window, everything expiring after the window."""

from __future__ import annotations

import pytest

from switchboard_router.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ten_percent_means_one_extra_attempt_per_ten_first_attempts() -> None:
    clock = Clock()
    budget = RetryBudget(0.1, 0, clock=clock)
    assert not budget.try_withdraw()
    for _ in range(9):
        budget.deposit()
    assert budget.balance == 0 and not budget.try_withdraw()
    budget.deposit()
    assert budget.balance == 1
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    for _ in range(25):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]


def test_the_reserve_allows_min_per_second_over_the_window_with_no_traffic() -> None:
    clock = Clock()
    budget = RetryBudget(0.1, 1.0, clock=clock)  # 10 over 10 s
    assert budget.balance == 10
    assert sum(budget.try_withdraw() for _ in range(15)) == 10
    # Withdrawals expire with the window: the reserve is whole again 10 s later.
    clock.now += 10.0
    assert budget.balance == 10


def test_deposits_expire_after_the_window_slice_by_slice() -> None:
    clock = Clock()
    budget = RetryBudget(0.5, 0, clock=clock)
    for _ in range(4):
        budget.deposit()  # two withdrawals' worth
    clock.now += 5.0
    for _ in range(2):
        budget.deposit()  # one more, in a later slice
    assert budget.balance == 3
    clock.now += 5.5  # the first four are out of the window, the last two are not
    assert budget.balance == 1
    clock.now += 5.0
    assert budget.balance == 0
    clock.now += 1000.0  # a long quiet spell zeroes everything without looping over it
    budget.deposit()
    budget.deposit()
    assert budget.balance == 1


def test_a_refund_gives_a_withdrawal_back() -> None:
    budget = RetryBudget(0.1, 0.1, clock=Clock())  # a reserve of one
    assert budget.try_withdraw() and not budget.try_withdraw()
    budget.refund()
    assert budget.try_withdraw()


def test_a_ratio_of_zero_leaves_only_the_reserve() -> None:
    budget = RetryBudget(0, 0, clock=Clock())
    for _ in range(1000):
        budget.deposit()
    assert not budget.try_withdraw()
    reserved = RetryBudget(0, 0.2, clock=Clock())
    assert [reserved.try_withdraw() for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    ("ratio", "per_second", "window"), [(-0.1, 1, 10), (0.1, -1, 10), (0.1, 1, 0)]
)
def test_bad_settings_are_refused(ratio: float, per_second: float, window: float) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        RetryBudget(ratio, per_second, window)
