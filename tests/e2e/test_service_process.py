"""The `entitlements-service` console script as a real process: reflection, the README's
grpcurl calls, refusal to start on bad configuration, graceful shutdown, embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.support import SYNC_SECRET, event, new_event_id, now_ms
from tests.support.reflection_client import ReflectionClient
from tests.support.service_process import SCRIPTS, service_process

pytestmark = pytest.mark.e2e

SUBJECT = "user_readme_" + new_event_id()[4:10]


def test_readme_grpcurl_session_through_reflection(database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    with service_process(env, tmp_path / "service.log") as (proc, target):
        client = ReflectionClient(target)
        try:
            assert client.list() == [
                "entitlements.v1.BillingSyncService",
                "entitlements.v1.EntitlementService",
                "entitlements.v1.UsageService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            can_use = client.call(
                "entitlements.v1.EntitlementService/CanUse",
                {"subject": SUBJECT, "feature": "advancedAnalytics"},
            )
            assert can_use == {"plan": "free", "reason": "REASON_FEATURE_NOT_IN_PLAN"}
            limits = client.call(
                "entitlements.v1.EntitlementService/GetLimits", {"subject": SUBJECT}
            )
            metered = limits.pop("metered")  # the metered limit's period (SPEC §10.1)
            assert [m["limit"] for m in metered] == ["aiInsightsPerMonth"]
            assert metered[0]["remaining"] == "20" and "resetsAt" in metered[0]
            assert limits.pop("validUntil") == metered[0]["resetsAt"]  # a reset is a change
            assert limits == {
                "plan": "free",
                "limits": {
                    "maxHabits": {"value": "10"},
                    "maxGoals": {"value": "3"},
                    "aiInsightsPerMonth": {"value": "20"},
                },
            }
            payload = event("item_active_pro_month", at_ms=now_ms(), subject=SUBJECT)
            import base64

            applied = client.call(
                "entitlements.v1.BillingSyncService/ApplyBillingEvent",
                {
                    "eventId": new_event_id(),
                    "type": "subscriptionItem.active",
                    "payload": base64.b64encode(json.dumps(payload).encode()).decode(),
                },
                metadata=(("authorization", f"Bearer {SYNC_SECRET}"),),
            )
            assert applied["outcome"] == "APPLIED" and applied["plan"] == "pro"
            can_use = client.call(
                "entitlements.v1.EntitlementService/CanUse",
                {"subject": SUBJECT, "feature": "advancedAnalytics"},
            )
            assert can_use["allowed"] is True and can_use["plan"] == "pro"
            with pytest.raises(grpc.RpcError) as err:
                client.call(
                    "entitlements.v1.EntitlementService/CanUse",
                    {"subject": SUBJECT, "feature": "nope"},
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    log = (tmp_path / "service.log").read_text()
    assert "shutting down" in log and "stopped" in log
    assert SYNC_SECRET not in log


def run_refusing(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "entitlements-service")],
        env={**os.environ, "ENTITLEMENTS_LISTEN": "127.0.0.1:0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_short_secret_refuses_to_start_naming_the_variable(database_url: str) -> None:
    r = run_refusing({"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": "short"})
    assert r.returncode == 2
    assert "BILLING_WEBHOOK_SYNC_SECRET" in r.stderr and "short" not in r.stderr.split("secret")[-1]
    assert "Traceback" not in r.stderr


def test_bad_catalog_refuses_to_start_naming_the_problem(database_url: str, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        'default_plan = "free"\nfeatures = ["a"]\nlimits = []\n'
        '[plans.free]\nrank = 0\nfeatures = ["a", "ghost"]\n'
    )
    r = run_refusing({"DATABASE_URL": database_url, "ENTITLEMENTS_CATALOG": str(catalog)})
    assert r.returncode == 2
    assert "feature 'ghost' is not declared" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_database_refuses_to_start(tmp_path: Path) -> None:
    r = run_refusing({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"})
    assert r.returncode == 3 and "cannot connect to PostgreSQL" in r.stderr


def test_embedded_postgres_when_no_database_url(tmp_path: Path) -> None:
    env = {"ENTITLEMENTS_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": ""}
    with service_process(env, tmp_path / "service.log") as (proc, target):
        client = ReflectionClient(target)
        try:
            r = client.call(
                "entitlements.v1.EntitlementService/CanUse",
                {"subject": "user_embedded", "feature": "aiInsights"},
            )
            assert r["allowed"] is True
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "service.log").read_text()
    assert "embedded PostgreSQL (pgserver)" in log
    assert (tmp_path / "data" / "pg" / "PG_VERSION").exists()
