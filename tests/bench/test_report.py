"""The benchmarks' shared formatting."""

from __future__ import annotations

from bench.report import median_range


def test_median_range_gives_the_median_then_the_range() -> None:
    assert median_range([3.0, 1.0, 2.5]) == "2.50 (1.00-3.00)"
    assert median_range([0.5, 0.25], ".0%") == "38% (25%-50%)"
    assert median_range([1234.0], ",.0f") == "1,234"  # one run: no range
