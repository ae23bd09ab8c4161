"""`entitlements catalog validate` and `catalog import`: the catalog commands that run without a
service (validate offline; import against a fake Clerk serving a recorded plan list)."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import load_catalog
from tests.support.fake_clerk import SECRET_KEY as CLERK_SECRET_KEY
from tests.support.fake_clerk import FakeClerk, serving_in_thread
from tests.support.service_process import SCRIPTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "service" / "default_catalog.toml"
# Clerk's `GET /v1/billing/plans` answer, written from its documented shape (BillingPlanJSON).
RECORDED_PLANS = ROOT / "tests" / "fixtures" / "clerk_billing_plans.json"

MISSPELT = """\
default_plan = "free"
features = ["reports", "export"]
limits = []

[plans.free]
rank = 0
features = ["reports"]

[plans.pro]
rank = 10
clerk_slug = ["pro"]
feature = ["reports", "export"]
"""


def entitlements(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The CLI with no service and no dev.env to fall back on."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "ENTITLEMENTS_"))}
    return subprocess.run(
        [str(SCRIPTS / "entitlements"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "ENTITLEMENTS_DATA_DIR": str(cwd / "no-data"), **(env or {})},
        cwd=cwd,
    )


def test_validate_the_bundled_catalog(tmp_path: Path) -> None:
    r = entitlements("catalog", "validate", str(BUNDLED), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{BUNDLED}: valid: 3 plans (free, pro, lifetime; default free)")
    assert load_catalog(None).fingerprint in r.stdout


def test_validate_names_each_misspelt_key_with_its_line_and_a_suggestion(tmp_path: Path) -> None:
    catalog = tmp_path / "plans.toml"
    catalog.write_text(MISSPELT)
    r = entitlements("catalog", "validate", str(catalog), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"error: {catalog}:11: plans.pro: unknown key `clerk_slug` (did you mean `clerk_slugs`?)",
        f"error: {catalog}:12: plans.pro: unknown key `feature` (did you mean `features`?)",
        f"{catalog}: invalid",
    ]
    as_json = json.loads(
        entitlements("--json", "catalog", "validate", str(catalog), cwd=tmp_path).stdout
    )
    assert as_json["valid"] is False and len(as_json["errors"]) == 2
    # Spelt right, the plan without a Clerk slug is the next error; then it is valid.
    catalog.write_text(
        MISSPELT.replace('clerk_slug = ["pro"]\n', "").replace("feature =", "features =")
    )
    r = entitlements("catalog", "validate", str(catalog), cwd=tmp_path)
    assert r.returncode == 1 and f"{catalog}:9: plan 'pro' can never be reached" in r.stdout
    catalog.write_text(
        MISSPELT.replace("clerk_slug =", "clerk_slugs =").replace("feature =", "features =")
    )
    assert entitlements("catalog", "validate", str(catalog), cwd=tmp_path).returncode == 0


def test_validate_an_unreadable_file_is_exit_2(tmp_path: Path) -> None:
    r = entitlements("catalog", "validate", str(tmp_path / "none.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot be read" in r.stderr


@pytest.fixture
def clerk_plans() -> Iterator[FakeClerk]:
    fake = FakeClerk(plans=json.loads(RECORDED_PLANS.read_text())["data"])
    with serving_in_thread(fake) as served:
        yield served


def test_import_writes_a_valid_catalog_from_clerks_plans(
    clerk_plans: FakeClerk, tmp_path: Path
) -> None:
    env = {"CLERK_SECRET_KEY": CLERK_SECRET_KEY, "CLERK_API_URL": clerk_plans.url}
    out = tmp_path / "catalog.toml"
    r = entitlements("catalog", "import", "--output", str(out), env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 plans and 3 features from Clerk" in r.stderr
    assert [s.path for s in clerk_plans.seen] == ["/v1/billing/plans"]
    data = tomllib.loads(out.read_text())
    assert data["default_plan"] == "free_user"
    assert data["features"] == ["ai_insights", "data_export", "shared_workspaces"]
    plans = data["plans"]
    assert {name: p["clerk_slugs"] for name, p in plans.items()} == {
        "free_user": ["free_user"],
        "free_org": ["free_org"],
        "pro": ["pro"],
        "team-plan": ["team-plan"],
    }
    assert plans["pro"]["features"] == ["ai_insights", "data_export"]
    assert plans["team-plan"]["features"] == ["data_export", "shared_workspaces"]
    assert [p["rank"] for p in plans.values()] == sorted(p["rank"] for p in plans.values())
    assert "# Team (cplan_2xTeam0000000000000000): payer type org" in out.read_text()
    # What it wrote validates (a warning: the org free plan has no features in Clerk).
    v = entitlements("catalog", "validate", str(out), cwd=tmp_path)
    assert v.returncode == 0, v.stdout
    assert "warning:" in v.stdout and "'free_org' has no features" in v.stdout
    # An existing file is kept unless --force.
    again = entitlements("catalog", "import", "-o", str(out), env=env, cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
    forced = entitlements(
        "--json", "catalog", "import", "-o", str(out), "--force", env=env, cwd=tmp_path
    )
    assert json.loads(forced.stdout) == {"output": str(out), "plans": 4, "features": 3}
    # To stdout, when no file is named.
    printed = entitlements("catalog", "import", env=env, cwd=tmp_path)
    assert tomllib.loads(printed.stdout) == data


def test_import_needs_the_clerk_key_and_reports_a_refused_one(
    clerk_plans: FakeClerk, tmp_path: Path
) -> None:
    r = entitlements("catalog", "import", env={"CLERK_API_URL": clerk_plans.url}, cwd=tmp_path)
    assert r.returncode == 2 and "CLERK_SECRET_KEY is not set" in r.stderr
    wrong = {"CLERK_SECRET_KEY": "sk_test_wrong", "CLERK_API_URL": clerk_plans.url}
    r = entitlements("catalog", "import", env=wrong, cwd=tmp_path)
    assert r.returncode == 3 and "check CLERK_SECRET_KEY" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
