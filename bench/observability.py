"""Cached CanUse with metrics and tracing on against both off, in one run.

Both services run side by side; rounds alternate between them, so drift of the shared machine
falls on both alike. While the instrumented one is measured, its /metrics is scraped every
second (far more often than Prometheus would) and it exports spans to a local OTLP sink.
"""

from __future__ import annotations

import statistics
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

ROUNDS = 3


def _scrape_every_second(url: str, stop: threading.Event, counts: list[int]) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen(url, timeout=5) as response:
            counts.append(len(response.read()))


def compare(
    bare: str, instrumented: str, metrics_url: str, measure: Callable[[str], dict[str, float]]
) -> dict[str, Any]:
    """`measure(target)` is one h2load run of cached CanUse; the ratios are of the means."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    scrapes: list[int] = []
    for _ in range(ROUNDS):
        runs["off"].append(measure(bare))
        stop = threading.Event()
        scraper = threading.Thread(target=_scrape_every_second, args=(metrics_url, stop, scrapes))
        scraper.start()
        try:
            runs["on"].append(measure(instrumented))
        finally:
            stop.set()
            scraper.join()

    def mean(side: str, key: str) -> float:
        return statistics.fmean(run[key] for run in runs[side])

    return {
        "rounds": ROUNDS,
        "off": {"rps": mean("off", "rps"), "p99_ms": mean("off", "p99_ms"), "runs": runs["off"]},
        "on": {"rps": mean("on", "rps"), "p99_ms": mean("on", "p99_ms"), "runs": runs["on"]},
        "on_vs_off_throughput": mean("on", "rps") / mean("off", "rps"),
        "on_vs_off_p99": mean("on", "p99_ms") / mean("off", "p99_ms"),
        "scrapes": len(scrapes),
        "scrape_bytes": scrapes[-1] if scrapes else 0,
    }
