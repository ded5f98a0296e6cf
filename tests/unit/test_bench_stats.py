"""bench.stats, and the pure scheduling and load-splitting logic of bench.proxy."""

from __future__ import annotations

import pytest

from bench.proxy import CASES, schedule, split_load
from bench.stats import Spread, percentile, ratio, spread
from bench.targets import Target


def test_percentile_matches_linear_interpolation() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(values, 0) == 15.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 40) == pytest.approx(29.0)  # numpy.percentile(..., 40)
    assert percentile(list(reversed(values)), 40) == pytest.approx(29.0)


def test_percentile_of_many() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert percentile(values, 50) == pytest.approx(500.5)
    assert percentile(values, 99) == pytest.approx(990.01)


def test_percentile_single_and_errors() -> None:
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_spread_ignores_missing() -> None:
    assert spread([3.0, None, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert spread([None, None]) is None
    assert spread([1.0, 4.0]) == Spread(2.5, 1.0, 4.0, 2)


def test_ratio_of_medians() -> None:
    assert ratio(Spread(50, 1, 99, 3), Spread(100, 1, 200, 3)) == 0.5
    assert ratio(None, Spread(1, 1, 1, 1)) is None
    assert ratio(Spread(1, 1, 1, 1), Spread(0, 0, 0, 1)) is None


def test_split_load() -> None:
    assert split_load(["a"], 4) == [("a", 4)]
    assert split_load(["a", "b"], 4) == [("a", 2), ("b", 2)]
    assert split_load(["a", "b"], 3) == [("a", 2), ("b", 1)]
    assert split_load(["a", "b"], 1) == [("a", 1)]


def test_schedule_interleaves_and_rotates() -> None:
    targets = [Target("a"), Target("b"), Target("c")]
    cases = list(CASES[:2])
    order = [(r, c.name, t.name) for r, c, t in schedule(targets, cases, 2)]
    first, second = CASES[0].name, CASES[1].name
    assert order[:6] == [
        (0, first, "a"),
        (0, first, "b"),
        (0, first, "c"),
        (0, second, "a"),
        (0, second, "b"),
        (0, second, "c"),
    ]
    assert [t for r, c, t in order if r == 1 and c == first] == ["b", "c", "a"]
    assert len(order) == 12


def test_cases_cover_the_brief() -> None:
    concurrencies = {c.concurrency for c in CASES}
    payloads = {c.payload for c in CASES}
    assert concurrencies == {1, 64}
    assert payloads == {100, 65536}
    assert any(c.path.endswith("/Stream") for c in CASES)
