"""`make run` writes its generated secrets readable by their owner only, atomically, and never
replaces the file of an earlier run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scripts.run_dev import write_new_private

pytestmark = pytest.mark.unit


def test_dev_env_is_created_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    target = tmp_path / "dev.env"
    old = os.umask(0)
    try:
        assert write_new_private(target, "SECRET=1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "SECRET=1\n"


def test_an_existing_file_is_kept_whole(tmp_path: Path) -> None:
    target = tmp_path / "dev.env"
    target.write_text("OLD=1\n")
    assert not write_new_private(target, "NEW=2\n")
    assert target.read_text() == "OLD=1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["dev.env"]  # no temporary file left
