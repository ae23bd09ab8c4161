"""make bench's Consume: the collector's pauses between two scrapes of the service's /metrics
(bench/consume.py gc_pauses), read from the histogram of every generation."""

from __future__ import annotations

import pytest

from bench.consume import gc_pauses

pytestmark = pytest.mark.unit

BOUNDS = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "+Inf")


def scrape(by_generation: dict[str, list[int]], sums: dict[str, float]) -> str:
    """A /metrics text with cumulative bucket counts per generation, as prometheus-client
    writes it."""
    lines = [
        "# HELP entitlements_gc_pause_seconds Pauses.",
        "# TYPE entitlements_gc_pause_seconds histogram",
    ]
    for generation, counts in by_generation.items():
        for bound, count in zip(BOUNDS, counts, strict=True):
            lines.append(
                f'entitlements_gc_pause_seconds_bucket{{generation="{generation}",le="{bound}"}}'
                f" {float(count)}"
            )
        lines.append(
            f'entitlements_gc_pause_seconds_count{{generation="{generation}"}} {float(counts[-1])}'
        )
        lines.append(
            f'entitlements_gc_pause_seconds_sum{{generation="{generation}"}} {sums[generation]}'
        )
    return "\n".join(lines) + "\n"


def test_the_pauses_between_two_scrapes_over_every_generation() -> None:
    before = scrape(
        {"0": [5, 5, 5, 5, 5, 5, 5], "1": [0, 1, 1, 1, 1, 1, 1]}, {"0": 0.001, "1": 0.001}
    )
    # Since: generation 0 four more under 0.5 ms and one of 7 ms; generation 1 one of 20 ms.
    after = scrape(
        {"0": [9, 9, 9, 9, 10, 10, 10], "1": [0, 1, 1, 1, 1, 2, 2]}, {"0": 0.010, "1": 0.021}
    )
    assert gc_pauses(before, after) == {
        "pauses": 6,
        "over_5_ms": 2,
        "total_ms": 29.0,
        "longest_under_ms": 25.0,
    }


def test_no_pause_between_two_scrapes() -> None:
    same = scrape({"0": [3, 3, 3, 3, 3, 3, 3]}, {"0": 0.001})
    assert gc_pauses(same, same) == {
        "pauses": 0,
        "over_5_ms": 0,
        "total_ms": 0.0,
        "longest_under_ms": 0.0,
    }


def test_a_service_without_the_series_reports_nothing() -> None:
    assert gc_pauses("", "")["pauses"] == 0
