"""`make shell` and `scripts/dev_env.sh`: a second terminal's environment for `make run` —
.venv/bin first on PATH, the development secrets of dev.env exported — and a clear refusal
while there is no dev.env yet."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
SCRIPTS = ("entitlements", "entitlements-service", "entitlements-gateway", "grpcurl")
DEV_ENV = (
    "BILLING_WEBHOOK_SYNC_SECRET=dev_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA\n"
    "CLERK_WEBHOOK_SIGNING_SECRET=whsec_c2lnbmluZw+/= whsec_b2xk\n"  # two, base64 padding
    "ENTITLEMENTS_TARGET=127.0.0.1:50999\n"
    "not a setting; neither is=this\n"
    "GATEWAY_URL=http://127.0.0.1:8999/api/webhooks/clerk-billing\n"
)
EXPECTED = dict(line.split("=", 1) for line in DEV_ENV.splitlines() if line[0].isupper())
# What the shell is asked to show: where each console script resolves, and each variable.
PROBE = "".join(f'echo "{name}=$(command -v {name})"\n' for name in SCRIPTS) + "".join(
    f'echo "{key}=${key}"\n' for key in EXPECTED
)


def clean_env(data: Path, **extra: str) -> dict[str, str]:
    """This process's environment without .venv/bin on PATH and without the dev settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in EXPECTED and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "SHELL")
    }
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(":") if Path(p) != VENV_BIN]
    return {**env, "PATH": ":".join(path), "ENTITLEMENTS_DATA_DIR": str(data), **extra}


def shown(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def write_dev_env(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "dev.env").write_text(DEV_ENV)


def make_shell(env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "shell"],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_dev_environment(stdout: str) -> None:
    found = shown(stdout)
    assert {name: found.get(name) for name in SCRIPTS} == {n: str(VENV_BIN / n) for n in SCRIPTS}
    assert {key: found.get(key) for key in EXPECTED} == EXPECTED


def test_make_shell_refuses_until_make_run_wrote_dev_env(tmp_path: Path) -> None:
    started = tmp_path / "started"
    fake_shell = tmp_path / "fake-shell"
    fake_shell.write_text(f"#!/bin/sh\ntouch {started}\n")
    fake_shell.chmod(0o755)
    r = make_shell(clean_env(tmp_path / "data", SHELL=str(fake_shell)), "")
    assert r.returncode != 0
    assert f"{tmp_path / 'data'}/dev.env does not exist yet: run `make run` first" in r.stderr
    assert r.stdout == "" and not started.exists()


def test_make_shell_starts_shell_with_venv_on_path_and_the_secrets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dev_env(data)
    r = make_shell(clean_env(data, SHELL="/bin/bash"), PROBE + 'echo "bash=$BASH_VERSION"\n')
    assert r.returncode == 0, r.stderr
    assert_dev_environment(r.stdout)
    assert shown(r.stdout)["bash"]
    assert "on PATH" in r.stderr and "BILLING_WEBHOOK_SYNC_SECRET" in r.stderr
    assert EXPECTED["BILLING_WEBHOOK_SYNC_SECRET"] not in r.stderr  # names, never values

    # No $SHELL: bash. The shell's exit status is make shell's.
    r = make_shell(clean_env(data), PROBE + 'echo "bash=$BASH_VERSION"\nexit 7\n')
    assert r.returncode == 2 and "Error 7" in r.stderr  # make's status for a failed recipe
    assert_dev_environment(r.stdout)
    assert shown(r.stdout)["bash"]


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_sourcing_dev_env_in_the_current_shell(tmp_path: Path, shell: str) -> None:
    data = tmp_path / "data"
    write_dev_env(data)
    source = (
        ". scripts/dev_env.sh" if shell == "sh" else f"cd / && source {ROOT}/scripts/dev_env.sh"
    )
    r = subprocess.run(
        [shell, "-c", f"{source} && {{\n{PROBE}}}"],
        cwd=ROOT,
        env=clean_env(data),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert_dev_environment(r.stdout)

    # Without dev.env: status 1, the reason, and the shell left as it was.
    (data / "dev.env").unlink()
    r = subprocess.run(
        [shell, "-c", f'{source}; echo "status=$?"; echo "PATH=$PATH"; {PROBE}'],
        cwd=ROOT,
        env=clean_env(data),
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = shown(r.stdout)
    assert found["status"] == "1" and "run `make run` first" in r.stderr
    assert str(VENV_BIN) not in found["PATH"] and found["BILLING_WEBHOOK_SYNC_SECRET"] == ""
