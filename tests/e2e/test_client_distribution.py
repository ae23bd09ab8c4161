"""The client stands alone: `pip install ./clients/python` into an empty virtualenv gives a
working client (sync and async, local cache included) without any server dependency."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SYNC_SECRET
from tests.support.service_process import service_process

pytestmark = pytest.mark.e2e

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "python"

CHECK = """
import asyncio, importlib.util, sys
from entitlements_client import AsyncEntitlementsClient, EntitlementsClient
server_side = ["asyncpg", "aiohttp", "svix", "pgserver", "service", "webhook_gateway"]
assert not [m for m in server_side if importlib.util.find_spec(m)], "server code installed"
target = sys.argv[1]
with EntitlementsClient(target, local_cache=True) as client:
    assert client.wait_synced(20)
    assert client.can_use("user_dist", "aiInsights")
    assert not client.can_use("user_dist", "dataExport")
    used = client.consume("user_dist", "aiInsightsPerMonth", 2)
    assert used.allowed and used.used == 2 and used.resets_at is not None
    assert client.check_limit("user_dist", "aiInsightsPerMonth").remaining == 18
async def main():
    async with AsyncEntitlementsClient(target) as client:
        assert (await client.get_limits("user_dist")).plan == "free"
        usage = await client.get_usage("user_dist")
        assert usage.meters["aiInsightsPerMonth"].used == 2
asyncio.run(main())
print("client works")
"""


def test_the_client_installs_alone_and_works(tmp_path: Path, database_url: str) -> None:
    source = tmp_path / "client"  # a copy: building must not write into the checkout
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    with service_process(env, tmp_path / "service.log") as (_, target):
        run = subprocess.run(
            [str(python), "-c", CHECK, target],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,  # not the repository: only what was installed can be imported
        )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "client works" in run.stdout
