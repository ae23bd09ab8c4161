"""`entitlements-service notify` refuses to start without what it needs, naming it."""

from __future__ import annotations

import pytest

from service.entrypoints import main as service_main
from service.entrypoints.launch import EXIT_CONFIG

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}, "ENTITLEMENTS_NOTIFY_URL"),
        (
            {
                "ENTITLEMENTS_NOTIFY_URL": "http://127.0.0.1:1/hook",
                "ENTITLEMENTS_NOTIFY_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            },
            "DATABASE_URL",
        ),
    ],
)
def test_notify_names_what_it_lacks(
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("DATABASE_URL", "ENTITLEMENTS_NOTIFY_URL", "ENTITLEMENTS_NOTIFY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        service_main.main(["notify"])
    assert exited.value.code == EXIT_CONFIG
    assert named in caplog.text
