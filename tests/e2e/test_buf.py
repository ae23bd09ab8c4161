"""The contract's Buf checks: `buf lint` is clean with one listed exception (the `Outcome`
values), and `buf breaking` (scripts/buf_breaking.sh, as `make check` runs it) refuses a
renamed field and accepts an unchanged contract. buf is the pinned one from tools/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
ENTITLEMENT_PROTO = "protos/entitlements/v1/entitlement_service.proto"


@pytest.fixture(scope="module")
def buf() -> Path:
    assert BUF.exists(), "buf is not installed: run `make tools` (npm ci in tools/)"
    return BUF


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_buf_lint_is_clean(buf: Path) -> None:
    result = _run([str(buf), "lint"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lint_exception_covers_only_the_outcome_values(buf: Path, tmp_path: Path) -> None:
    """buf.yaml can only list files; without the exception, `Outcome` alone is flagged."""
    config = (ROOT / "buf.yaml").read_text()
    assert "ENUM_VALUE_PREFIX:" in config
    strict = tmp_path / "buf.yaml"
    strict.write_text("version: v2\nmodules:\n  - path: protos\nlint:\n  use:\n    - STANDARD\n")
    result = _run([str(buf), "lint", "--config", strict.read_text()], ROOT)
    flagged = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode != 0 and flagged, result.stdout + result.stderr
    names = {"APPLIED", "DUPLICATE", "STALE", "IGNORED", "UNPARSEABLE"}
    for line in flagged:
        assert 'should be prefixed with "OUTCOME_"' in line, line
        assert any(f'"{name}"' in line for name in names), line


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def proto_repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of the contract, buf.yaml and the breaking script."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", repo / "protos")
    (repo / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "buf_breaking.sh", repo / "scripts")
    shutil.copy(ROOT / "buf.yaml", repo)
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "contract")
    return repo


def _breaking(repo: Path, buf: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(repo / "scripts" / "buf_breaking.sh")], repo, BUF=str(buf))


def test_breaking_passes_when_the_contract_is_unchanged(buf: Path, proto_repo: Path) -> None:
    proto = proto_repo / ENTITLEMENT_PROTO
    proto.write_text(proto.read_text() + "\n// A comment changes nothing on the wire.\n")
    _git(proto_repo, "commit", "--quiet", "-am", "comment only")
    result = _breaking(proto_repo, buf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compatible with HEAD~1" in result.stdout


def test_breaking_fails_on_a_renamed_field(buf: Path, proto_repo: Path) -> None:
    proto = proto_repo / ENTITLEMENT_PROTO
    text = proto.read_text()
    renamed = text.replace(
        "message CanUseRequest {\n  string subject = 1;",
        "message CanUseRequest {\n  string subject_id = 1;",
    )
    assert renamed != text
    proto.write_text(renamed)
    _git(proto_repo, "commit", "--quiet", "-am", "rename a field")
    result = _breaking(proto_repo, buf)
    assert result.returncode != 0
    assert "subject" in result.stdout and "CanUseRequest" in result.stdout, result.stdout


def test_breaking_is_skipped_without_a_previous_commit(buf: Path, proto_repo: Path) -> None:
    """A shallow (depth 1) clone has no HEAD~1 and no tag: nothing to compare, it says so."""
    result = _breaking(proto_repo, buf)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr


def test_breaking_compares_with_the_newest_tag_without_a_previous_commit(
    buf: Path, proto_repo: Path, tmp_path: Path
) -> None:
    _git(proto_repo, "tag", "v1.0.0")
    proto = proto_repo / ENTITLEMENT_PROTO
    proto.write_text(proto.read_text().replace("int64 version = 7;", "int32 version = 7;"))
    _git(proto_repo, "commit", "--quiet", "-am", "change a type")
    shallow = tmp_path / "shallow"
    _git(tmp_path, "clone", "--quiet", "--depth", "1", f"file://{proto_repo}", str(shallow))
    _git(shallow, "fetch", "--quiet", "--depth", "1", "origin", "tag", "v1.0.0")
    result = _breaking(shallow, buf)
    assert result.returncode != 0, result.stdout
    assert "version" in result.stdout, result.stdout
