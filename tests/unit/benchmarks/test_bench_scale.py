"""The scale benchmark's verdicts from recorded points: medians over rounds, the wall-time range, the targets."""

from __future__ import annotations

import pytest

from benchmarks.bench_scale import checks
from benchmarks.scale import Point

pytestmark = pytest.mark.unit


def store_point(size: int, repeat: int, write_s: float, wall_s: float) -> Point:
    return Point("store", "docs", size, 1, repeat=repeat, wall_s=wall_s, chunks=100, write_s=write_s)


def test_store_growth_is_judged_on_medians_not_on_one_noisy_run():
    points = [
        *(store_point(0, r, w, 50 + 3 * r) for r, w in enumerate([0.10, 0.11, 0.12])),
        *(store_point(10**6, r, w, 55 + r) for r, w in enumerate([0.11, 0.50, 0.12])),  # one outlier run
    ]
    [write, wall] = checks(points, {}, {})
    assert write.startswith("- PASS") and "1.091" in write
    assert wall.startswith("- PASS") and "+3.0 s" in wall and "over 6.0 s" in wall and "0: 53.0 (50.0-56.0)" in wall


def test_a_store_that_slows_every_run_fails_both_checks():
    points = [
        *(store_point(0, r, 0.10, 50) for r in range(3)),
        *(store_point(10**6, r, 0.13, 60) for r in range(3)),
    ]
    [write, wall] = checks(points, {}, {})
    assert write.startswith("- FAIL") and "1.300" in write
    assert wall.startswith("- FAIL")
