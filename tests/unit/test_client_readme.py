"""The client's READMEs hold without a service: clients/python/README.md's blocks that need
none run as written (the testing fake, the error handling), and the root README's client
snippet says what is left *after* the added unit, and "unlimited" rather than "0 left"."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from entitlements_client import LimitCheck
from tests.support.readme import command_blocks

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_readmes_offline_blocks_run() -> None:
    blocks = command_blocks((ROOT / "clients" / "python" / "README.md").read_text())
    offline = [
        b for b in blocks if b.language == "python" and "entitlements.internal" not in b.text
    ]
    assert any("FakeEntitlementsClient" in b.text for b in offline)
    for block in offline:
        exec(compile(block.text, f"clients/python/README.md:{block.line}", "exec"), {})


def _left_after_it() -> str:
    """The expression the root README's client snippet prints as "left after it"."""
    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in command_blocks(readme) if "left after it" in b.text]
    [line] = [ln for ln in block.text.splitlines() if re.match(r"\s*left = ", ln)]
    expression = line.split("=", 1)[1].split("#")[0].strip()
    ast.parse(expression, mode="eval")
    return expression


@pytest.mark.parametrize(
    ("check", "left"),
    [
        (LimitCheck(True, 10, 6, False), 5),  # 4 of 10 used: 6 before this one, 5 after it
        (LimitCheck(True, 10, 1, False), 0),  # the last one
        (LimitCheck(True, 0, 0, True), "unlimited"),  # not "0 left"
    ],
)
def test_the_readme_snippet_says_what_is_left_after_the_added_unit(
    check: LimitCheck, left: object
) -> None:
    assert eval(_left_after_it(), {"check": check}) == left
