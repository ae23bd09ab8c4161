"""make bench's CanUse ratio against the floor: each side's processes summed round by round
(two processes of the same code differ by several per cent for as long as they run)."""

from __future__ import annotations

import pytest

from bench.canuse import paired_ratio, pooled_ratio

pytestmark = pytest.mark.unit


def _runs(*rps: float) -> list[dict[str, float]]:
    return [{"rps": r} for r in rps]


def test_each_round_sums_its_processes_before_dividing() -> None:
    # Round 1: (90 + 110) / (100 + 100) = 1.0; round 2: (80 + 100) / (100 + 100) = 0.9.
    found = pooled_ratio([_runs(90, 80), _runs(110, 100)], [_runs(100, 100), _runs(100, 100)])
    assert found["rounds"] == [1.0, 0.9]
    assert found["median"] == pytest.approx(0.95)


def test_throughputs_are_summed_not_their_ratios_averaged() -> None:
    # Summed: (90 + 150) / (100 + 200) = 0.8; the mean of per-process ratios would be 0.825.
    found = pooled_ratio([_runs(90), _runs(150)], [_runs(100), _runs(200)])
    assert found["rounds"] == [0.8]


def test_one_process_a_side_is_the_paired_ratio() -> None:
    cached, floor = _runs(90, 95, 99), _runs(100, 100, 100)
    assert pooled_ratio([cached], [floor]) == paired_ratio(cached, floor)
    assert paired_ratio(cached, floor)["median"] == pytest.approx(0.95)
