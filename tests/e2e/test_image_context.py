"""`make deploy-check`'s build-context check (scripts/check_image_context.py): the Dockerfile's
every COPY source must survive `.dockerignore` (Docker's own rules, via docker-py); a source it
leaves out is named. Run on copies of the repository's tracked files, as `docker build` sees
them. Also: the image's service, without pgserver, refuses to start without DATABASE_URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.entrypoints.launch import EXIT_CONFIG

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# .dockerignore as it was when the image did not build (entitlements_cli left out).
DOCKERIGNORE_WITHOUT_CLI = """\
*
!requirements/runtime.lock
!pyproject.toml
!README.md
!LICENSE
!clients/python/
!entitlements_common/
!service/
!webhook_gateway/
**/__pycache__
"""


def _copy_of_repository(dest: Path) -> Path:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, tracked.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_image_context.py"), "--static-only",
         "--root", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_copy_source_dockerignore_leaves_out_is_named(tmp_path: Path) -> None:
    root = _copy_of_repository(tmp_path)
    (root / ".dockerignore").write_text(DOCKERIGNORE_WITHOUT_CLI)
    done = _check(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "deploy-check: Dockerfile:18: COPY entitlements_cli: not in the build context "
        "(excluded; see .dockerignore)"
    ]


def test_a_copy_source_missing_from_the_repository_is_named(tmp_path: Path) -> None:
    root = _copy_of_repository(tmp_path)
    shutil.rmtree(root / "webhook_gateway")
    done = _check(root)
    assert done.returncode == 1
    assert "COPY webhook_gateway: not in the build context (not in the repository" in done.stderr


def test_the_repository_s_dockerignore_keeps_every_copy_source(tmp_path: Path) -> None:
    done = _check(_copy_of_repository(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "every COPY source is in the build context" in done.stdout


def test_without_database_url_and_without_pgserver_the_service_refuses_in_one_line(
    tmp_path: Path,
) -> None:
    hide_pgserver = (
        "import sys; sys.modules['pgserver'] = None; "  # as in the image: not installed
        "from service.entrypoints.main import main; main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "ENTITLEMENTS_DATA_DIR": str(tmp_path),
        "ENTITLEMENTS_LISTEN": "127.0.0.1:0",
        "ENTITLEMENTS_METRICS_LISTEN": "off",
    }
    done = subprocess.run(
        [sys.executable, "-c", hide_pgserver], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == EXIT_CONFIG, done.stderr
    [line] = done.stderr.splitlines()
    assert "DATABASE_URL is not set" in line and "embedded" in line
