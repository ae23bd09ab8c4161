"""Stale pgserver handles of a run that ended without stopping its PostgreSQL are dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.adapters.postgres.embedded import clear_stale_handles

pytestmark = pytest.mark.unit


def ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_handles_are_dropped_and_live_ones_kept(tmp_path: Path) -> None:
    dead = ended_pid()
    (tmp_path / ".handle_pids.json").write_text(json.dumps([dead, os.getpid()]))
    assert clear_stale_handles(tmp_path) == [dead]
    assert json.loads((tmp_path / ".handle_pids.json").read_text()) == [os.getpid()]
    assert clear_stale_handles(tmp_path) == []  # nothing more to drop


def test_a_postmaster_pid_naming_a_process_that_is_not_postgres_is_removed(
    tmp_path: Path,
) -> None:
    lines = [str(os.getpid()), str(tmp_path), "0", "5432", str(tmp_path), "", "1 2", "ready"]
    (tmp_path / "postmaster.pid").write_text("\n".join(lines) + "\n")
    clear_stale_handles(tmp_path)
    assert not (tmp_path / "postmaster.pid").exists()


def test_a_postmaster_pid_of_an_ended_process_is_left_to_postgres(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text(f"{ended_pid()}\n")
    clear_stale_handles(tmp_path)
    assert (tmp_path / "postmaster.pid").exists()


def test_nothing_there_is_fine(tmp_path: Path) -> None:
    assert clear_stale_handles(tmp_path) == []
