"""Refusals are logged as rate-limited summaries; the first one of a reason at once."""

from __future__ import annotations

import logging

import pytest

from entitlements_common.refusals import RefusalLog

pytestmark = pytest.mark.unit


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_two_thousand_refusals_write_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    log = RefusalLog(logging.getLogger("t.refusals"), window=60, clock=clock)
    with caplog.at_level(logging.WARNING, "t.refusals"):
        for _ in range(2000):
            log.refused("bad signature")
        clock.now = 61
        log.refused("bad signature")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "refused: bad signature"
    assert lines[1] == "refused: bad signature, 1999 more in the last 60 s (not logged one by one)"
    assert lines[2] == "refused: bad signature"
    assert len(lines) == 3


def test_reasons_are_limited_apart_and_flushed(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(logging.getLogger("t.refusals2"), window=60, clock=_Clock())
    with caplog.at_level(logging.WARNING, "t.refusals2"):
        for _ in range(3):
            log.refused("too large")
            log.refused("wrong token", "EntitlementService/CanUse")
        log.flush()
        log.flush()
    lines = sorted(r.getMessage() for r in caplog.records)
    assert lines == sorted(
        [
            "refused: too large",
            "refused: wrong token (EntitlementService/CanUse)",
            "refused: too large, 2 more in the last 60 s (not logged one by one)",
            "refused: wrong token, 2 more in the last 60 s (not logged one by one)",
        ]
    )
