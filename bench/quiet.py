"""Start a latency measurement on a quiet machine.

The benchmarks share two cores with PostgreSQL and with whatever the benchmark before them left
running (what exactly was not found). In `make bench` of 2026-12-08 01:07 UTC the no-op floor's
own p99 at 2 000 calls/s was 56.6 ms right after the growth benchmark, against 2.0 ms when
Consume ran alone an hour before. So before each
open-loop load, `settle` flushes the page cache's dirty pages (`sync`), then waits until the
cores are mostly idle for a few seconds in a row, up to a limit; what it waited and how idle
the machine was are reported with the figures, as is a limit reached. It does not ask
PostgreSQL for a checkpoint: after one, the first write to each page logs the whole page, so
the load would start on slower commits (one run with a checkpoint: p99 169 ms over 10 000
subjects; the next, without: 75 ms; on a noisy hour, so no more than a hint).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

STAT = Path("/proc/stat")
IDLE_SHARE = 0.85  # of both cores, each second, for QUIET_SECONDS in a row
QUIET_SECONDS = 3
LIMIT_SECONDS = 90


def cpu_times(stat_text: str) -> tuple[int, int]:
    """(all, idle) jiffies from /proc/stat's first line (idle counts iowait too)."""
    fields = [int(x) for x in stat_text.splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time idle between two readings of cpu_times (1.0 when none passed)."""
    spent = after[0] - before[0]
    return (after[1] - before[1]) / spent if spent > 0 else 1.0


def settle() -> dict[str, Any]:
    """sync, then wait for QUIET_SECONDS seconds in a row with at least IDLE_SHARE of the CPU
    idle, at most LIMIT_SECONDS (`quiet`: whether that came; None where /proc/stat is not)."""
    started = time.monotonic()
    os.sync()
    if not STAT.exists():
        return {"waited_s": round(time.monotonic() - started, 1), "idle_share": None, "quiet": None}
    quiet, share = 0, 0.0
    reading = cpu_times(STAT.read_text())
    while quiet < QUIET_SECONDS and time.monotonic() - started < LIMIT_SECONDS:
        time.sleep(1)
        now = cpu_times(STAT.read_text())
        share, reading = idle_share(reading, now), now
        quiet = quiet + 1 if share >= IDLE_SHARE else 0
    return {
        "waited_s": round(time.monotonic() - started, 1),
        "idle_share": round(share, 3),
        "quiet": quiet >= QUIET_SECONDS,
    }
