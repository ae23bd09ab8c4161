"""The `entitlements` CLI against running processes: output and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.service_process import SCRIPTS
from tests.e2e.stack import WEBHOOK_PATH, Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(database_url, tmp_path_factory.mktemp("cli")) as s:
        yield s


def cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "entitlements"), "--target", stack.service_target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_check_exit_codes(stack: Stack) -> None:
    assert cli(stack, "check", "user_cli_free", "aiInsights").returncode == 0
    denied = cli(stack, "check", "user_cli_free", "dataExport")
    assert denied.returncode == 1 and "REASON_FEATURE_NOT_IN_PLAN" in denied.stdout
    bad = cli(stack, "check", "user_cli_free", "teleport")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "teleport" in bad.stderr


def test_unreachable_service_is_exit_3(stack: Stack) -> None:
    r = subprocess.run(
        [str(SCRIPTS / "entitlements"), "--target", "127.0.0.1:1", "limits", "user_x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and "UNAVAILABLE" in r.stderr


def test_demo_webhook_then_limits_show_and_plans(stack: Stack, tmp_path: Path) -> None:
    subject = f"user_demo_{secrets.token_hex(4)}"
    env = {
        "CLERK_WEBHOOK_SIGNING_SECRET": stack.signing_secret,
        "GATEWAY_URL": f"http://127.0.0.1:{stack.gateway_port}{WEBHOOK_PATH}",
    }
    demo = cli(stack, "demo-webhook", "--subject", subject, env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert '200 {"outcome": "APPLIED"}' in demo.stdout and "allowed=True plan=pro" in demo.stdout
    limits = cli(stack, "limits", subject)
    assert limits.returncode == 0 and "maxHabits" in limits.stdout and "unlimited" in limits.stdout
    shown = json.loads(cli(stack, "--json", "show", subject).stdout)
    assert shown["plan"] == "pro" and shown["status"] == "ENTITLEMENT_STATUS_ACTIVE"
    plans = cli(stack, "plans")
    assert plans.returncode == 0 and "free (default)" in plans.stdout and "lifetime" in plans.stdout


def test_demo_webhook_without_secret_is_exit_2(stack: Stack, tmp_path: Path) -> None:
    env = {"CLERK_WEBHOOK_SIGNING_SECRET": "", "CLERK_WEBHOOK_SECRET": ""}
    r = cli(stack, "demo-webhook", env=env, cwd=tmp_path)
    assert r.returncode == 2 and "CLERK_WEBHOOK_SIGNING_SECRET" in r.stderr


def test_grant_history_revoke(stack: Stack) -> None:
    from tests.support import SYNC_SECRET

    subject = f"user_cligrant_{secrets.token_hex(4)}"
    env = {"BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    granted = cli(
        stack,
        "--json",
        "grant",
        subject,
        "pro",
        "--reason",
        "comp for an outage",
        "--expires",
        "2999-01-01T00:00:00+00:00",
        env=env,
    )
    assert granted.returncode == 0, granted.stderr
    grant_id = json.loads(granted.stdout)["grantId"]
    assert cli(stack, "check", subject, "dataExport").returncode == 0
    history = cli(stack, "history", subject, env=env)
    assert history.returncode == 0 and "comp for an outage" in history.stdout
    assert "free → pro" in history.stdout
    assert cli(stack, "revoke", grant_id, "--reason", "done", env=env).returncode == 0
    assert cli(stack, "check", subject, "dataExport").returncode == 1
    again = cli(stack, "revoke", grant_id, env=env)
    assert again.returncode == 3 and "NOT_FOUND" in again.stderr
    missing = cli(
        stack,
        "grant",
        subject,
        "pro",
        "--reason",
        "x",
        env={"BILLING_WEBHOOK_SYNC_SECRET": ""},
        cwd=Path("/"),
    )
    assert missing.returncode == 2 and "BILLING_WEBHOOK_SYNC_SECRET" in missing.stderr
