"""make bench's quiet start (bench/quiet.py): how idle the cores were between two readings of
/proc/stat."""

from __future__ import annotations

import pytest

from bench.quiet import cpu_times, idle_share

pytestmark = pytest.mark.unit

# user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
AFTER = "cpu  160 0 70 900 70 0 0 0 0 0\ncpu0 80 0 35 450 35 0 0 0 0 0\n"


def test_idle_and_iowait_count_as_idle_of_all_the_time_spent() -> None:
    assert cpu_times(BEFORE) == (1000, 850)
    # 200 jiffies passed: 100 idle, 20 waiting on I/O.
    assert idle_share(cpu_times(BEFORE), cpu_times(AFTER)) == pytest.approx(0.6)


def test_no_time_passed_reads_as_idle() -> None:
    assert idle_share(cpu_times(BEFORE), cpu_times(BEFORE)) == 1.0
