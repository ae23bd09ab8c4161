"""The TypeScript client's own tests (clients/typescript, `npm test`: node's test runner
against a real service it starts, over the Connect and the gRPC transports), run from
`make test` so the README's test command covers them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def test_typescript_client_e2e() -> None:
    npm = shutil.which("npm")
    assert npm, "npm is needed for the TypeScript client's tests (Node ≥ 20)"
    assert (CLIENT / "node_modules").is_dir(), (
        "run `make ts-install` (npm ci in clients/typescript)"
    )
    result = subprocess.run(
        [npm, "test"],
        cwd=CLIENT,
        env={**os.environ, "ENTITLEMENTS_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = "\n".join(
        line for line in result.stdout.splitlines() if line.startswith(("# ", "not ok"))
    )
    assert result.returncode == 0, summary + "\n" + result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout, summary
