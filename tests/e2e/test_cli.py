"""The `entitlements` CLI against running processes: output and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from tests.support import SYNC_SECRET, db_query, event, now_ms
from tests.support.fake_clerk import SECRET_KEY as CLERK_SECRET_KEY
from tests.support.fake_clerk import FakeClerk, plan, serving_in_thread
from tests.support.service_process import SCRIPTS
from tests.support.stack import WEBHOOK_PATH, Stack, running_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = SCRIPTS / "grpcurl"


@pytest.fixture(scope="module")
def fake_clerk() -> Iterator[FakeClerk]:
    with serving_in_thread(FakeClerk()) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, fake_clerk: FakeClerk
) -> Iterator[Stack]:
    clerk = {
        "CLERK_SECRET_KEY": CLERK_SECRET_KEY,
        "CLERK_API_URL": fake_clerk.url,
        "ENTITLEMENTS_RECONCILE_INTERVAL_SECONDS": "0",  # on demand only: tests count requests
    }
    with running_stack(database_url, tmp_path_factory.mktemp("cli"), clerk) as s:
        yield s


def cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "entitlements"), "--target", stack.service_target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def demo_webhook(
    stack: Stack, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`make demo`'s script (a dev script, not a CLI command)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "send_demo_webhook.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ENTITLEMENTS_TARGET": stack.service_target, **env},
        cwd=cwd,
    )


def test_check_exit_codes(stack: Stack) -> None:
    assert cli(stack, "check", "user_cli_free", "aiInsights").returncode == 0
    denied = cli(stack, "check", "user_cli_free", "dataExport")
    assert denied.returncode == 1 and "REASON_FEATURE_NOT_IN_PLAN" in denied.stdout
    bad = cli(stack, "check", "user_cli_free", "teleport")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "teleport" in bad.stderr


def test_unreachable_service_is_exit_3(stack: Stack) -> None:
    r = subprocess.run(
        [str(SCRIPTS / "entitlements"), "--target", "127.0.0.1:1", "limits", "user_x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and "UNAVAILABLE" in r.stderr


def test_demo_webhook_then_limits_show_and_plans(stack: Stack, tmp_path: Path) -> None:
    subject = f"user_demo_{secrets.token_hex(4)}"
    env = {
        "CLERK_WEBHOOK_SIGNING_SECRET": stack.signing_secret,
        "GATEWAY_URL": f"http://127.0.0.1:{stack.gateway_port}{WEBHOOK_PATH}",
    }
    demo = demo_webhook(stack, "--subject", subject, env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert '200 {"outcome": "APPLIED"}' in demo.stdout and "allowed=True plan=pro" in demo.stdout
    limits = cli(stack, "limits", subject)
    assert limits.returncode == 0 and "maxHabits" in limits.stdout and "unlimited" in limits.stdout
    shown = json.loads(cli(stack, "--json", "show", subject).stdout)
    assert shown["plan"] == "pro" and shown["status"] == "ENTITLEMENT_STATUS_ACTIVE"
    plans = cli(stack, "plans")
    assert plans.returncode == 0 and "free (default)" in plans.stdout and "lifetime" in plans.stdout


def test_demo_webhook_without_secret_is_exit_2(stack: Stack, tmp_path: Path) -> None:
    env = {"CLERK_WEBHOOK_SIGNING_SECRET": "", "CLERK_WEBHOOK_SECRET": ""}
    r = demo_webhook(stack, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "CLERK_WEBHOOK_SIGNING_SECRET" in r.stderr


def test_grant_history_revoke(stack: Stack) -> None:
    subject = f"user_cligrant_{secrets.token_hex(4)}"
    env = {"BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    granted = cli(
        stack,
        "--json",
        "grant",
        subject,
        "pro",
        "--reason",
        "comp for an outage",
        "--expires",
        "2999-01-01T00:00:00+00:00",
        env=env,
    )
    assert granted.returncode == 0, granted.stderr
    shown = json.loads(granted.stdout)
    assert set(shown) == {f.name for f in sync_pb.GrantPlanResponse.DESCRIPTOR.fields}
    grant_id = shown["grant_id"]
    assert cli(stack, "check", subject, "dataExport").returncode == 0
    history = cli(stack, "history", subject, env=env)
    assert history.returncode == 0 and "comp for an outage" in history.stdout
    assert "free → pro" in history.stdout
    assert cli(stack, "revoke", grant_id, "--reason", "done", env=env).returncode == 0
    assert cli(stack, "check", subject, "dataExport").returncode == 1
    again = cli(stack, "revoke", grant_id, env=env)
    assert again.returncode == 3 and "NOT_FOUND" in again.stderr
    missing = cli(
        stack,
        "grant",
        subject,
        "pro",
        "--reason",
        "x",
        env={"BILLING_WEBHOOK_SYNC_SECRET": ""},
        cwd=Path("/"),
    )
    assert missing.returncode == 2 and "BILLING_WEBHOOK_SYNC_SECRET" in missing.stderr


def test_settings_from_the_dev_env_of_the_data_dir(stack: Stack, tmp_path: Path) -> None:
    """Not in the environment: read from ENTITLEMENTS_DATA_DIR/dev.env (make run's), whatever
    the current directory."""
    (tmp_path / "dev.env").write_text(
        f"BILLING_WEBHOOK_SYNC_SECRET={SYNC_SECRET}\nENTITLEMENTS_TARGET={stack.service_target}\n"
    )
    env = {"BILLING_WEBHOOK_SYNC_SECRET": "", "ENTITLEMENTS_DATA_DIR": str(tmp_path)}
    r = subprocess.run(
        [str(SCRIPTS / "entitlements"), "history", "user_cli_devenv", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ENTITLEMENTS_TARGET": "", **env},
        cwd="/",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == {"subject": "user_cli_devenv", "entries": []}


OPERATOR = {"BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}


def test_reconcile_repairs_a_lost_webhook(stack: Stack, fake_clerk: FakeClerk) -> None:
    subject = f"user_clirec_{secrets.token_hex(4)}"
    t0 = now_ms() - 600_000
    created = event("subscription_created_free", at_ms=t0, subject=subject)
    assert stack.send(created).status == 200
    # The pro activation webhook was lost; Clerk's API has it.
    pro = event("item_active_pro_month", at_ms=t0 + 60_000, subject=subject)["data"]
    free = dict(created["data"]["items"][0], status="ended")
    fake_clerk.subscription_for(subject, [free, pro], updated_at=t0 + 60_000)
    r = cli(stack, "reconcile", subject, env=OPERATOR)
    assert r.returncode == 0, r.stderr
    assert "repaired" in r.stdout and "free → pro" in r.stdout and "rcn_" in r.stdout
    assert cli(stack, "check", subject, "dataExport").returncode == 0
    history = cli(stack, "history", subject, env=OPERATOR)
    assert "subscription.reconciled  APPLIED" in history.stdout and "[reconcile]" in history.stdout

    # --all with a progress bar and JSON; the repaired subject is now in sync.
    every = cli(stack, "--json", "--progress", "reconcile", "--all", env=OPERATOR)
    assert every.returncode == 0, every.stderr
    mine = [x for x in json.loads(every.stdout)["results"] if x["subject"] == subject]
    assert mine[0]["status"] == "RECONCILE_STATUS_IN_SYNC"
    assert "reconcile" in every.stderr and "100%" in every.stderr

    # Clerk down (after retries): exit 3, nothing changed.
    fake_clerk.scripted = [(503, {})] * 5
    down = cli(stack, "reconcile", subject, env=OPERATOR)
    assert down.returncode == 3 and "failed" in down.stdout
    assert cli(stack, "check", subject, "dataExport").returncode == 0


def test_replay_after_a_parser_fix(stack: Stack) -> None:
    subject = f"user_clireplay_{secrets.token_hex(4)}"
    payload = event("item_active_pro_month", at_ms=now_ms() - 60_000, subject=subject)
    event_id = f"msg_{secrets.token_hex(8)}"
    # What a release with a parser bug stored: the delivery, marked UNPARSEABLE, no state.
    db_query(
        stack.database_url,
        """INSERT INTO deliveries (event_id, type, payload, outcome, received_at)
           VALUES ($1, 'subscriptionItem.active', $2, 'UNPARSEABLE', now())""",
        event_id,
        json.dumps(payload).encode(),
    )
    assert cli(stack, "check", subject, "dataExport").returncode == 1
    r = cli(stack, "replay", "--unparseable", env=OPERATOR)
    assert r.returncode == 0, r.stderr
    assert event_id in r.stdout and "UNPARSEABLE → APPLIED  free → pro" in r.stdout
    assert cli(stack, "check", subject, "dataExport").returncode == 0
    again = cli(stack, "--json", "replay", "--subject", subject, env=OPERATOR)
    assert json.loads(again.stdout)["changed"] == 0 and json.loads(again.stdout)["replayed"] == 1
    bad = cli(stack, "replay", env=OPERATOR)
    assert bad.returncode == 2 and "--unparseable" in bad.stderr


def test_verify_clean_then_corrupted(stack: Stack) -> None:
    subject = f"user_cliverify_{secrets.token_hex(4)}"
    t = now_ms() - 600_000
    stack.send(event("item_active_pro_month", at_ms=t, subject=subject))
    stack.send(event("item_canceled_pro", at_ms=t + 60_000, subject=subject))
    clean = cli(stack, "verify", env=OPERATOR)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no differences" in clean.stdout
    item_of = "SELECT item_id FROM items WHERE subject = $1"
    item_id = db_query(stack.database_url, item_of, subject)[0]["item_id"]
    corrupt = "UPDATE items SET status = $2, lifecycle_rank = $3 WHERE item_id = $1"
    db_query(stack.database_url, corrupt, item_id, "ended", 4)
    try:
        found = cli(stack, "--json", "verify", env=OPERATOR)
        assert found.returncode == 1
        report = json.loads(found.stdout)
        assert [d["subject"] for d in report["differences"]] == [subject, subject]
        assert report["subjects_checked"] >= 1 and report["deliveries_replayed"] >= 2
    finally:
        db_query(stack.database_url, corrupt, item_id, "canceled", 3)
    assert cli(stack, "verify", env=OPERATOR).returncode == 0


def test_catalog_check(stack: Stack, fake_clerk: FakeClerk) -> None:
    fake_clerk.plans = [plan("free_user", "cplan_f", "Free"), plan("team", "cplan_t", "Team")]
    r = cli(stack, "catalog", "check", env=OPERATOR)
    assert r.returncode == 1
    assert "not in the catalog (resolves to the default plan): team" in r.stdout
    assert "in the catalog but not at Clerk: lifetime" in r.stdout
    fake_clerk.plans = [
        plan(slug, f"cplan_{slug}", slug)
        for slug in (
            "free_user",
            "free_org",
            "free",
            "pro",
            "pro_monthly",
            "pro_yearly",
            "lifetime",
        )
    ]
    ok = cli(stack, "catalog", "check", env=OPERATOR)
    assert ok.returncode == 0 and "catalog and Clerk agree" in ok.stdout


def test_read_token_for_the_cli(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A service with ENTITLEMENTS_READ_TOKEN refuses the CLI's reads without it (exit 2,
    UNAUTHENTICATED) and answers them with it (the first of a rotating list)."""
    token = "cli-read-token-" + secrets.token_hex(8)
    with running_stack(
        database_url,
        tmp_path_factory.mktemp("readtoken"),
        service_extra={"ENTITLEMENTS_READ_TOKEN": f"{token},older-token-{'o' * 16}"},
    ) as s:
        refused = cli(
            s, "check", "user_cli_token", "aiInsights", env={"ENTITLEMENTS_READ_TOKEN": ""}
        )
        assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
        as_json = cli(s, "limits", "user_cli_token", "--json", env={"ENTITLEMENTS_READ_TOKEN": ""})
        assert as_json.returncode == 3
        assert json.loads(as_json.stdout)["error"]["code"] == "UNAUTHENTICATED"
        allowed = cli(
            s, "check", "user_cli_token", "aiInsights", env={"ENTITLEMENTS_READ_TOKEN": token}
        )
        assert allowed.returncode == 0, allowed.stderr
        assert cli(s, "plans", env={"ENTITLEMENTS_READ_TOKEN": token}).returncode == 0


def grpcurl(
    stack: Stack, method: str, request: dict[str, Any], *flags: str
) -> list[dict[str, Any]]:
    """What grpcurl prints for one call (one JSON object per response message)."""
    auth = ("-H", f"authorization: Bearer {SYNC_SECRET}") if "BillingSync" in method else ()
    call = [stack.service_target, f"entitlements.v1.{method}"]
    r = subprocess.run(
        [str(GRPCURL), "-plaintext", *flags, *auth, "-d", json.dumps(request), *call],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    decoder, text, found = json.JSONDecoder(), r.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        found.append(message)
        text = text[end:].strip()
    return found


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def contains(big: Any, small: Any) -> bool:
    """Everything in `small` is in `big`, at the same place (dict keys may be added)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], small[k]) for k in small)
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return bool(big == small)


def test_json_is_what_grpcurl_prints_with_every_default(stack: Stack) -> None:
    """Under --json a command prints its response as grpcurl does: the proto field names
    (`previous_plan`, `valid_until`), every field without presence even at its default
    (`"allowed": false`): grpcurl -emit-defaults less its nulls, and a superset of grpcurl's
    default output."""
    subject = f"user_clijson_{secrets.token_hex(4)}"
    stack.send(event("item_canceled_pro", at_ms=now_ms() - 60_000, subject=subject))
    free = f"user_clijson_free_{secrets.token_hex(4)}"
    cases: list[tuple[list[str], str, dict[str, Any]]] = [
        (["check", subject, "dataExport"], "EntitlementService/CanUse", {"feature": "dataExport"}),
        (["check", free, "dataExport"], "EntitlementService/CanUse", {"feature": "dataExport"}),
        (["limits", subject], "EntitlementService/GetLimits", {}),
        (["limits", free], "EntitlementService/GetLimits", {}),
        (["show", subject], "EntitlementService/GetEntitlements", {}),
        (["show", free], "EntitlementService/GetEntitlements", {}),
        (["plans"], "EntitlementService/ListPlans", {}),
        (["history", subject], "BillingSyncService/GetSubjectHistory", {"page_size": 100}),
    ]
    for args, method, extra in cases:
        request = {"subject": args[1], **extra} if len(args) > 1 else extra
        mine = cli(stack, *args, "--json", env=OPERATOR)
        assert mine.returncode in (0, 1), mine.stderr
        shown = json.loads(mine.stdout)
        [everything] = grpcurl(stack, method, request, "-emit-defaults")
        assert shown == without_nulls(everything), (args, shown, everything)
        [plain] = grpcurl(stack, method, request)
        assert contains(shown, plain), (args, shown, plain)
    denied = json.loads(cli(stack, "check", free, "dataExport", "--json").stdout)
    assert denied["allowed"] is False and denied["reason"] == "REASON_FEATURE_NOT_IN_PLAN"
    shown = json.loads(cli(stack, "show", subject, "--json").stdout)
    assert "valid_until" in shown and "validUntil" not in shown

    # A streaming call: the results the CLI gathers are those grpcurl prints message by message.
    cli(stack, "replay", "--subject", subject, env=OPERATOR)  # settles the stored outcomes
    mine = json.loads(cli(stack, "replay", "--subject", subject, "--json", env=OPERATOR).stdout)
    messages = grpcurl(
        stack, "BillingSyncService/ReplayDeliveries", {"subject": subject}, "-emit-defaults"
    )
    streamed = [r for m in messages for r in m.get("results", [])]
    assert mine["results"] == without_nulls(streamed) and mine["results"][0]["changed"] is False


def test_global_options_before_or_after_the_command(stack: Stack) -> None:
    entitlements, target = str(SCRIPTS / "entitlements"), stack.service_target
    orders = [
        ["check", "user_cli_opts", "dataExport", "--json", "--target", target],
        ["--json", "--target", target, "check", "user_cli_opts", "dataExport"],
        ["--target", target, "check", "user_cli_opts", "dataExport", "--json"],
        ["--target", "127.0.0.1:1", "check", "user_cli_opts", "dataExport", "--target", target],
    ]
    results = [
        subprocess.run([entitlements, *args], capture_output=True, text=True, timeout=60)
        for args in orders
    ]
    assert [r.returncode for r in results] == [1, 1, 1, 1], [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout == results[2].stdout
    assert json.loads(results[0].stdout)["allowed"] is False
    assert results[3].stdout.startswith("allowed")  # not JSON: --json was not given; later wins
    progress = cli(stack, "replay", "--subject", "user_cli_opts", "--progress", env=OPERATOR)
    assert progress.returncode == 0 and "replay: " in progress.stderr
    quiet = cli(
        stack, "--progress", "replay", "--subject", "user_cli_opts", "--no-progress", env=OPERATOR
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
    nested = cli(stack, "catalog", "check", "--json", env=OPERATOR)
    assert nested.returncode in (0, 1) and "unmapped_clerk_plans" in json.loads(nested.stdout)


def test_errors_under_json_are_one_object_on_stdout(stack: Stack, tmp_path: Path) -> None:
    unreadable = tmp_path / "unreadable"
    (unreadable / "dev.env").mkdir(parents=True)  # a directory: reading it fails, even as root
    no_secret = {"BILLING_WEBHOOK_SYNC_SECRET": "", "ENTITLEMENTS_DATA_DIR": str(tmp_path)}
    cases: list[tuple[list[str], dict[str, str], int, str, str]] = [
        (["--target", "127.0.0.1:1", "limits", "user_x"], {}, 3, "UNAVAILABLE", "127.0.0.1:1"),
        (["history", "user_x", "--limit", "many"], OPERATOR, 2, "INVALID_ARGUMENT", "--limit"),
        (["check", "user_x"], {}, 2, "INVALID_ARGUMENT", "feature"),
        (["check", "user_x", "teleport"], {}, 2, "INVALID_ARGUMENT", "teleport"),
        (["grant", "user_x", "pro", "--reason", "r", "--expires", "soon"], OPERATOR, 2,
         "INVALID_ARGUMENT", "--expires"),
        (["history", "user_x"], {"BILLING_WEBHOOK_SYNC_SECRET": "wrong-" + "w" * 32}, 3,
         "UNAUTHENTICATED", ""),
        (["revoke", "grant_nonexistent"], OPERATOR, 3, "NOT_FOUND", ""),
        (["history", "user_x"], no_secret, 2, "FAILED_PRECONDITION", "BILLING_WEBHOOK_SYNC"),
        (["history", "user_x"], {**no_secret, "ENTITLEMENTS_DATA_DIR": str(unreadable)}, 2,
         "FAILED_PRECONDITION", "dev.env"),
    ]  # fmt: skip
    for args, env, code, name, mentions in cases:
        for where in ("after", "before"):
            line = [*args, "--json"] if where == "after" else ["--json", *args]
            r = cli(stack, *line, env=env)
            assert r.returncode == code, (line, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
            shown = json.loads(r.stdout)  # the whole of stdout: one document
            assert list(shown) == ["error"] and sorted(shown["error"]) == ["code", "message"]
            assert shown["error"]["code"] == name, (line, shown)
            assert shown["error"]["message"] and mentions in shown["error"]["message"]
        text = cli(stack, *args, env=env)  # the same error without --json: stderr, same code
        assert text.returncode == code and text.stdout == "" and "Traceback" not in text.stderr
        assert "error" in text.stderr
