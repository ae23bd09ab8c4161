"""The notifier's retry schedule and settings: the backoff never exceeds its cap, its jitter
stays within [half, all] of the exponential step, and bad settings name their variable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entitlements_common.settings import ConfigError
from service.application.notifications import backoff_seconds
from service.notify_config import notify_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@given(
    attempts=st.integers(min_value=0, max_value=10_000),
    cap=st.floats(min_value=0.01, max_value=3600),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_never_above_the_cap_and_jitter_within_bounds(
    attempts: int, cap: float, rand: float
) -> None:
    delay = backoff_seconds(attempts, cap, rand=lambda: rand)
    step = min(cap, 0.5 * 2.0 ** min(max(attempts - 1, 0), 60))
    assert delay <= cap
    assert step / 2 <= delay <= step


def test_backoff_grows_then_reaches_the_cap() -> None:
    top = [backoff_seconds(n, 30.0, rand=lambda: 0.999999) for n in range(1, 10)]
    assert top == sorted(top) and top[0] < 1 and top[-1] == pytest.approx(30.0, rel=1e-5)
    # With a 30 s cap a receiver back from any outage is retried within 30 s.
    assert max(backoff_seconds(n, 30.0) for n in range(1, 200)) <= 30.0


def test_settings() -> None:
    assert notify_settings({}) is None
    s = notify_settings(
        {
            "ENTITLEMENTS_NOTIFY_URL": "https://a.example/hook, https://b.example/x https://a.example/hook",
            "ENTITLEMENTS_NOTIFY_SECRET": f"{SECRET} {SECRET[:-2]}AA",
        }
    )
    assert s is not None
    assert s.urls == ("https://a.example/hook", "https://b.example/x")
    assert len(s.secrets) == 2 and s.max_backoff_seconds == 30.0 and s.give_up_seconds == 86400


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ENTITLEMENTS_NOTIFY_URL": "https://a.example"}, "ENTITLEMENTS_NOTIFY_SECRET"),
        (
            {"ENTITLEMENTS_NOTIFY_URL": "https://a.example", "ENTITLEMENTS_NOTIFY_SECRET": "x"},
            "ENTITLEMENTS_NOTIFY_SECRET",
        ),
        (
            {"ENTITLEMENTS_NOTIFY_URL": "ftp://a.example", "ENTITLEMENTS_NOTIFY_SECRET": SECRET},
            "ENTITLEMENTS_NOTIFY_URL",
        ),
        (
            {
                "ENTITLEMENTS_NOTIFY_URL": "https://a.example",
                "ENTITLEMENTS_NOTIFY_SECRET": SECRET,
                "ENTITLEMENTS_NOTIFY_MAX_BACKOFF_SECONDS": "0",
            },
            "ENTITLEMENTS_NOTIFY_MAX_BACKOFF_SECONDS",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        notify_settings(env)
