"""The change follower's failures (application/change_feed.py): a run of them is logged once
with its traceback, not once per retry, and its end is reported."""

from __future__ import annotations

import logging

import pytest

from service.application.failures import FailureRun

pytestmark = pytest.mark.unit


def test_a_run_of_failures_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = FailureRun("change follower")
    with caplog.at_level(logging.WARNING, logger="service.application.failures"):
        for _ in range(5):
            try:
                raise ConnectionResetError("database went away")
            except ConnectionResetError:
                failures.failed("cannot read the change log")
        failures.recovered()
        failures.recovered()  # nothing more to report
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    first, recovered = warnings
    assert first.exc_info is not None and first.exc_info[0] is ConnectionResetError
    assert "cannot read the change log; retrying" in first.getMessage()
    assert "recovered after 5 failed attempts" in recovered.getMessage()
