"""make bench's in-process instrumentation cost runs the interceptors as the server does (a
change to how the server registers handlers broke it once, seen only in a full `make bench`)."""

from __future__ import annotations

import pytest

from bench import instrumentation_cost

pytestmark = pytest.mark.unit


def test_the_instrumentation_cost_runs_the_server_s_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instrumentation_cost, "CALLS", 50)
    monkeypatch.setattr(instrumentation_cost, "REPEATS", 1)
    result = instrumentation_cost.measure(100.0)
    assert result["bare_us"] > 0 and result["metrics_and_tracing_us"] > 0
