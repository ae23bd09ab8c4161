"""How the service's process runs Python's cycle collector, and the pauses it makes.

Every grpc.aio call leaves garbage only the collector frees: grpc's own method lookup
(`_find_method_handler`, compiled) makes a closure that refers to its own scope, three objects
a call that reference counting never frees. So the young generation fills with them at the
call rate, and one collection's pause grows with the young generation's threshold: at 20 000
allocations (this module's setting until 2026-12-08) a young collection found 17 000-21 000
such objects and paused the event loop 5-15 ms every few seconds at 2 000 calls/s, and the next
generation's 34-53 ms about once a minute; those pauses set much of Consume's p99 (README,
Benchmarks: Consume). At 2 000 a young collection paused under 1 ms (the next generation under
3 ms) in the same loads.

The pauses are counted (`entitlements_gc_pause_seconds`, by generation), so a p99 that climbs
can be matched against them; a collection is a few a second, so the count costs nothing a call.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from service.metrics import GC_PAUSE_SECONDS

# Collections of the youngest generation after this many new container objects (CPython's
# default is 700; see above for why not 20 000); the older two keep CPython's ratios.
GC_YOUNG_THRESHOLD = 2_000
GC_OLDER_THRESHOLDS = (20, 20)


class PauseRecorder:
    """A `gc.callbacks` entry: each collection's duration, observed by generation."""

    def __init__(self) -> None:
        self._started = 0.0
        self._by_generation = [GC_PAUSE_SECONDS.labels(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)


def record_pauses() -> PauseRecorder:
    """Count every collection's pause from now on (once per process)."""
    for callback in gc.callbacks:
        if isinstance(callback, PauseRecorder):
            return callback
    recorder = PauseRecorder()
    gc.callbacks.append(recorder)
    return recorder


def tune_garbage_collection() -> None:
    """Once serving: what start-up allocated (modules, the catalog, the wired application)
    moves out of the collector's sight (`gc.freeze`), the generations get the thresholds
    above, and pauses are counted."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
    record_pauses()
