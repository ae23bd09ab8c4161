"""Resident memory of a process (Linux /proc), for the tests that flood a listener."""

from __future__ import annotations

import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    """The resident set size of `pid` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class PeakRss:
    """Samples a process's RSS; `peak` is the highest seen by `sample()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_mib(pid)
        self.peak = self.baseline

    def sample(self) -> float:
        now = rss_mib(self.pid)
        self.peak = max(self.peak, now)
        return now

    def settle(self, below: float, timeout: float = 10.0) -> float:
        """Wait until RSS falls below `below` MiB (memory given back), or the timeout ends;
        returns the last reading."""
        deadline = time.monotonic() + timeout
        now = self.sample()
        while now >= below and time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.sample()
        return now
