"""The `entitlements` CLI's usage and override commands against running processes: `usage`,
`consume`, `override set` / `override remove`; their --json is what grpcurl prints, and their
errors and exit codes are the other commands'."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from tests.e2e.test_cli import OPERATOR, cli, contains, grpcurl, without_nulls
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

METER = "aiInsightsPerMonth"


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(database_url, tmp_path_factory.mktemp("cli-usage")) as s:
        yield s


def new_subject(tag: str) -> str:
    return f"user_cli{tag}_{secrets.token_hex(4)}"


def test_consume_and_usage_print_what_grpcurl_prints(stack: Stack) -> None:
    who, key = new_subject("use"), "k-" + secrets.token_hex(6)
    first = cli(stack, "consume", who, METER, "15", "--key", key, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["duplicate"] is False
    again = cli(stack, "--json", "consume", who, METER, "15", "--key", key)
    assert again.returncode == 0, again.stderr
    shown = json.loads(again.stdout)
    request = {"subject": who, "limit": METER, "amount": 15, "idempotency_key": key}
    [everything] = grpcurl(stack, "UsageService/Consume", request, "-emit-defaults")
    assert shown == without_nulls(everything)  # the same retried answer, field for field
    [plain] = grpcurl(stack, "UsageService/Consume", request)
    assert contains(shown, plain)
    assert (shown["allowed"], shown["used"], shown["remaining"]) == (True, "15", "5")
    assert shown["duplicate"] is True and shown["limit_value"] == "20" and "resets_at" in shown

    refused = cli(stack, "consume", who, METER, "6", "--json")
    assert refused.returncode == 1, refused.stderr  # did not fit: nothing recorded
    assert json.loads(refused.stdout)["allowed"] is False

    usage = cli(stack, "usage", who, "--json")
    assert usage.returncode == 0, usage.stderr
    [everything] = grpcurl(stack, "UsageService/GetUsage", {"subject": who}, "-emit-defaults")
    assert json.loads(usage.stdout) == without_nulls(everything)
    [meter] = json.loads(usage.stdout)["usage"]
    assert (meter["limit"], meter["used"], meter["remaining"]) == (METER, "15", "5")

    table = cli(stack, "usage", who)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:4] == [
        "limit",
        "used",
        "reserved",
        "remaining",
    ]
    [row] = [line.split() for line in table.stdout.splitlines() if line.startswith(METER)]
    assert row[:4] == [METER, "15", "0", "5"] and len(row) == 6  # date and time of the reset

    # Without --json: the answer, and the key it was recorded under (to retry with).
    text = cli(stack, "consume", who, METER)
    assert text.returncode == 0 and "allowed" in text.stdout
    [printed] = [ln.split()[1] for ln in text.stdout.splitlines() if ln.startswith("idempotency")]
    retried = json.loads(cli(stack, "consume", who, METER, "--key", printed, "--json").stdout)
    assert retried["duplicate"] is True and retried["used"] == "16"


def test_usage_and_consume_errors(stack: Stack) -> None:
    who = new_subject("usebad")
    cases: list[tuple[list[str], int, str, str]] = [
        (["consume", who, "maxHabits"], 2, "INVALID_ARGUMENT", "not metered"),
        (["consume", who, "teleports"], 2, "INVALID_ARGUMENT", "teleports"),
        (["consume", who, METER, "0"], 2, "INVALID_ARGUMENT", "amount"),
        (["consume", who, METER, "many"], 2, "INVALID_ARGUMENT", "amount"),
        (["consume", who, METER, "--key", ""], 2, "INVALID_ARGUMENT", "idempotency_key"),
        (["--target", "127.0.0.1:1", "usage", who], 3, "UNAVAILABLE", "127.0.0.1:1"),
    ]
    for args, code, name, mentions in cases:
        r = cli(stack, *args, "--json")
        assert r.returncode == code, (args, r.stdout, r.stderr)
        shown = json.loads(r.stdout)
        assert shown["error"]["code"] == name and mentions in shown["error"]["message"], shown
        text = cli(stack, *args)
        assert text.returncode == code and text.stdout == "" and "Traceback" not in text.stderr
    usage = json.loads(cli(stack, "usage", who, "--json").stdout)  # nothing was recorded
    assert [u["used"] for u in usage["usage"]] == ["0"]


def test_override_set_and_remove(stack: Stack) -> None:
    who = new_subject("ovr")
    assert cli(stack, "check", who, "dataExport").returncode == 1
    granted = cli(
        stack, "override", "set", who, "--feature", "dataExport", "--on",
        "--reason", "beta tester", "--json", env=OPERATOR,
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    shown = json.loads(granted.stdout)
    assert set(shown) == {f.name for f in sync_pb.SetOverrideResponse.DESCRIPTOR.fields}
    override_id = shown["override_id"]
    assert override_id and int(shown["version"]) > 0
    allowed = cli(stack, "check", who, "dataExport", "--json")
    assert allowed.returncode == 0
    assert json.loads(allowed.stdout)["reason"] == "REASON_FEATURE_OVERRIDE_ENABLED"

    limit = cli(
        stack, "override", "set", who, "--limit", "maxHabits", "--value", "50",
        "--expires-at", "2999-01-01T00:00:00", "--reason", "big account", env=OPERATOR,
    )  # fmt: skip
    assert limit.returncode == 0 and "override_id" in limit.stdout, limit.stderr
    metered = cli(
        stack, "override", "set", who, "--limit", METER, "--unlimited", "--reason", "AI trial",
        env=OPERATOR,
    )  # fmt: skip
    assert metered.returncode == 0, metered.stderr
    [row] = [ln.split() for ln in cli(stack, "usage", who).stdout.splitlines() if METER in ln]
    assert row[3] == "unlimited"

    # `show --json` lists them, as grpcurl prints GetEntitlements.
    entitlements = json.loads(cli(stack, "show", who, "--json").stdout)
    [everything] = grpcurl(
        stack, "EntitlementService/GetEntitlements", {"subject": who}, "-emit-defaults"
    )
    assert entitlements == without_nulls(everything)
    assert entitlements["limits"]["maxHabits"]["value"] == "50"
    by_id = {o["override_id"]: o for o in entitlements["overrides"]}
    assert by_id[override_id]["feature"] == "dataExport" and by_id[override_id]["enabled"]
    assert len(by_id) == 3

    history = cli(stack, "history", who, env=OPERATOR)
    assert history.returncode == 0 and "feature dataExport granted: beta tester" in history.stdout
    assert f"override    {override_id}" in history.stdout

    removed = cli(
        stack, "override", "remove", override_id, "--reason", "done", "--json", env=OPERATOR
    )
    assert removed.returncode == 0, removed.stderr
    assert set(json.loads(removed.stdout)) == {"version"}
    assert cli(stack, "check", who, "dataExport").returncode == 1


def test_override_errors(stack: Stack) -> None:
    who = new_subject("ovrbad")
    no_secret = {"BILLING_WEBHOOK_SYNC_SECRET": "", "ENTITLEMENTS_DATA_DIR": "/nonexistent"}
    base = ["override", "set", who]
    cases: list[tuple[list[str], dict[str, str], int, str, str]] = [
        ([*base, "--feature", "dataExport", "--reason", "r"], OPERATOR, 2,
         "INVALID_ARGUMENT", "--on"),
        ([*base, "--limit", "maxHabits", "--reason", "r"], OPERATOR, 2,
         "INVALID_ARGUMENT", "--value"),
        ([*base, "--limit", "maxHabits", "--on", "--value", "3", "--reason", "r"], OPERATOR, 2,
         "INVALID_ARGUMENT", "--feature"),
        ([*base, "--feature", "dataExport", "--on", "--unlimited", "--reason", "r"], OPERATOR,
         2, "INVALID_ARGUMENT", "--limit"),
        ([*base, "--feature", "dataExport", "--limit", "maxHabits", "--on", "--reason", "r"],
         OPERATOR, 2, "INVALID_ARGUMENT", "not allowed with"),
        ([*base, "--feature", "dataExport", "--on"], OPERATOR, 2, "INVALID_ARGUMENT",
         "--reason"),
        ([*base, "--feature", "dataExport", "--on", "--reason", "r", "--expires-at", "soon"],
         OPERATOR, 2, "INVALID_ARGUMENT", "--expires-at"),
        ([*base, "--feature", "teleport", "--on", "--reason", "r"], OPERATOR, 2,
         "INVALID_ARGUMENT", "teleport"),
        ([*base, "--limit", "maxHabits", "--value", "-1", "--reason", "r"], OPERATOR, 2,
         "INVALID_ARGUMENT", "value"),
        (["override", "remove", "ovr_nonexistent"], OPERATOR, 3, "NOT_FOUND", ""),
        ([*base, "--feature", "dataExport", "--on", "--reason", "r"], no_secret, 2,
         "FAILED_PRECONDITION", "BILLING_WEBHOOK_SYNC_SECRET"),
    ]  # fmt: skip
    for args, env, code, name, mentions in cases:
        r = cli(stack, *args, "--json", env=env)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
        shown = json.loads(r.stdout)
        assert shown["error"]["code"] == name and mentions in shown["error"]["message"], shown
        text = cli(stack, *args, env=env)
        assert text.returncode == code and text.stdout == "" and "error" in text.stderr
    entitlements = json.loads(cli(stack, "show", who, "--json").stdout)
    assert entitlements["overrides"] == []  # nothing refused was applied
