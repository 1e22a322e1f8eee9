"""``make bench-split``'s arithmetic (bench/split.py): the fixed and per-chunk parts of CPU per
completion, and the TTFT quantiles over direct."""

from __future__ import annotations

import pytest

from bench.split import Split, split, split_table, ttft_line


def test_a_line_through_exact_points_gives_its_intercept_and_slope() -> None:
    # 400 us per completion plus 40 us per chunk, in ms per completion.
    points = [(chunks, 0.4 + 0.04 * chunks) for chunks in (2, 20, 100)]
    fitted = split(points)
    assert fitted.fixed_us == pytest.approx(400)
    assert fitted.per_chunk_us == pytest.approx(40)


def test_noisy_points_give_the_least_squares_line() -> None:
    fitted = split([(2, 1.0), (2, 1.2), (20, 2.0), (100, 6.1)])
    # The mean point (31, 2.575) lies on the least-squares line.
    assert fitted.fixed_us / 1000 + fitted.per_chunk_us / 1000 * 31 == pytest.approx(2.575)
    assert 40 < fitted.per_chunk_us < 60


def test_one_chunk_count_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="two different chunk counts"):
        split([(20, 1.0), (20, 1.1)])


def test_the_table_gives_each_part_and_its_ratio() -> None:
    table = split_table(Split(1000, 45), Split(500, 40))
    fixed, per_chunk = table.splitlines()[1:]
    assert fixed.split()[-2:] == ["500", "2.00x"]
    assert per_chunk.split()[-2:] == ["5.0", "1.12x"]


def test_ttft_quantiles_are_given_over_direct() -> None:
    direct = [0.0002] * 100
    # Nearest rank: the 90th of 100 samples is p90.
    line = ttft_line("router", [0.0012] * 89 + [0.003] * 11, direct)
    assert "p50  1.20 (+1.00)" in line
    assert "p90  3.00 (+2.80)" in line
