"""ENTITLEMENTS_UNKNOWN_PLAN through a real service and gateway: a paying customer's item moved
to a plan slug the catalog lacks. `default` (TC-09) gives the default plan; `keep` holds the
delivery back and the customer keeps the plan until the catalog maps the slug and the delivery
is replayed. Either way it is loud: the subject's history, the counter, the log."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs

from service.domain.catalog import parse_catalog_text
from tests.support import SYNC_SECRET, event, fresh_database, now_ms
from tests.support.metrics import scrape_until, value
from tests.support.service_process import SCRIPTS, free_port
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UNKNOWN = "pro_2027"
COUNTER = "entitlements_unknown_plan_deliveries_total"


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    return subprocess.run(
        [str(SCRIPTS / "entitlements"), "--target", stack.service_target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def send(stack: Stack, payload: dict[str, object]) -> str:
    answer = stack.send(payload)
    assert answer.status == 200, answer.body
    return str(answer.json()["outcome"])


def moved_to_unknown_plan(stack: Stack, who: str, slug: str = UNKNOWN) -> str:
    """The subject buys pro, then its item moves to a slug the catalog lacks."""
    t = now_ms()
    assert send(stack, event("item_active_pro_month", at_ms=t, subject=who)) == "APPLIED"
    assert stack.plan(who) == "pro"
    moved = event("item_active_pro_month", at_ms=t + 1000, subject=who, plan_slug=slug)
    moved["data"]["plan_id"] = moved["data"]["plan"]["id"] = "cplan_2027"
    return send(stack, moved)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@contextmanager
def policy_stack(
    database_url: str, log_dir: Path, policy: str, port: int, catalog: Path | None = None
) -> Iterator[Stack]:
    env = {
        "ENTITLEMENTS_UNKNOWN_PLAN": policy,
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{port}",
        **({"ENTITLEMENTS_CATALOG": str(catalog)} if catalog else {}),
    }
    with running_stack(database_url, log_dir, env) as stack:
        yield stack


def test_default_policy_gives_the_default_plan_loudly(
    database_url: str, tmp_path: Path, metrics_port: int
) -> None:
    who = f"user_unknown_default_{now_ms()}"
    with policy_stack(database_url, tmp_path, "default", metrics_port) as stack:
        assert moved_to_unknown_plan(stack, who) == "APPLIED"
        assert stack.plan(who) == "free"  # the reference app's TC-09
        history = cli(stack, "history", who)
        assert history.returncode == 0, history.stderr
        assert f"unknown plan slug '{UNKNOWN}' (id 'cplan_2027') mapped to default plan 'free'" in (
            history.stdout
        )
        samples = scrape_until(
            f"http://127.0.0.1:{metrics_port}/metrics", lambda s: value(s, COUNTER) >= 1
        )
        assert value(samples, COUNTER) == 1
        assert UNKNOWN in stack.logs()


def test_keep_policy_holds_the_delivery_until_the_catalog_maps_the_slug(
    database_url: str, tmp_path: Path, metrics_port: int
) -> None:
    who = f"user_unknown_keep_{now_ms()}"
    with policy_stack(database_url, tmp_path, "keep", metrics_port) as stack:
        assert moved_to_unknown_plan(stack, who) == "IGNORED"
        assert stack.plan(who) == "pro"  # kept, not dropped to free
        history = cli(stack, "history", who)
        assert f"unknown plan slug '{UNKNOWN}' (id 'cplan_2027'): not applied" in history.stdout
        assert f"entitlements replay --subject {who}" in history.stdout
        samples = scrape_until(
            f"http://127.0.0.1:{metrics_port}/metrics", lambda s: value(s, COUNTER) >= 1
        )
        assert value(samples, COUNTER) == 1
        # The held delivery is no difference between the log and the live state.
        verify = cli(stack, "verify")
        assert verify.returncode == 0, verify.stdout
        # Replayed with the same catalog, it stays held.
        assert cli(stack, "replay", "--subject", who).returncode == 0
        assert stack.plan(who) == "pro"
    # The catalog maps the slug now (a new plan, to tell it from pro): replayed, it applies.
    text = (ROOT / "service" / "default_catalog.toml").read_text()
    mapped = tmp_path / "catalog.toml"
    mapped.write_text(
        text
        + text[text.index("[plans.pro]") : text.index("[plans.lifetime]")]
        .replace("[plans.pro]", "[plans.pro2027]")
        .replace("rank = 10", "rank = 15")
        .replace(
            'clerk_slugs = ["pro", "pro_monthly", "pro_yearly"]', f'clerk_slugs = ["{UNKNOWN}"]'
        )
    )
    with policy_stack(database_url, tmp_path, "keep", free_port(), mapped) as stack:
        replay = cli(stack, "replay", "--subject", who)
        assert replay.returncode == 0, replay.stderr
        assert "IGNORED → APPLIED" in replay.stdout
        assert stack.plan(who) == "pro2027"


# PromQL words that are not metric names (the alert rules use few of them).
PROMQL_WORDS = {"by", "without", "on", "ignoring", "bool", "and", "or", "unless", "offset"}


def alert_metrics() -> set[str]:
    """Every metric name the example alert rules' expressions select."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["annotations"]["summary"], rule
            expr = re.sub(r"\[[^\]]*\]|\{[^}]*\}|\"[^\"]*\"", " ", rule["expr"])
            for name, call in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", expr):
                if not call and name not in PROMQL_WORDS:
                    names.add(name)
    return names


def test_status_metric_and_history_show_an_unknown_slug(
    pg_admin_dsn: str, tmp_path: Path, metrics_port: int
) -> None:
    """`entitlements status` lists the slug (how often, when, an example subject), the alert
    rule's metric moves, and the subject's history says the slug was unknown."""
    slug, first, latest = "team_2028", f"user_status_a_{now_ms()}", f"user_status_b_{now_ms()}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with (
        fresh_database(pg_admin_dsn) as dsn,
        policy_stack(dsn, tmp_path, "default", metrics_port) as stack,
    ):
        quiet = cli(stack, "status", "--json")
        assert quiet.returncode == 0, quiet.stdout + quiet.stderr
        status = json.loads(quiet.stdout)
        assert status["serving"] and status["unknown_plans"] == []
        assert re.fullmatch(r"[0-9a-f]{32}", status["log_id"])
        bundled = (ROOT / "service" / "default_catalog.toml").read_text()
        assert status["catalog_fingerprint"] == parse_catalog_text(bundled).fingerprint
        assert status["unknown_plan_policy"] == "default" and status["window_hours"] == 168
        # The example alert rule selects metrics the service exports.
        wanted = alert_metrics()
        assert wanted == {COUNTER}
        exported = {name for name, _ in scrape_until(metrics_url, lambda s: True)}
        assert wanted <= exported

        assert moved_to_unknown_plan(stack, first, slug) == "APPLIED"
        assert moved_to_unknown_plan(stack, latest, slug) == "APPLIED"

        loud = cli(stack, "status", "--json")
        assert loud.returncode == 1, loud.stdout + loud.stderr  # something to look at
        (seen,) = json.loads(loud.stdout)["unknown_plans"]
        assert (seen["slug"], seen["plan_id"], seen["deliveries"]) == (slug, "cplan_2027", "2")
        assert seen["example_subject"] == latest and seen["last_seen"] >= seen["first_seen"]
        assert seen["note"] == (
            f"unknown plan slug '{slug}' (id 'cplan_2027') mapped to default plan 'free'"
        )
        table = cli(stack, "status")
        assert table.returncode == 1
        row = next(line for line in table.stdout.splitlines() if slug in line)
        assert row.split()[:3] == [slug, "cplan_2027", "2"] and row.endswith(latest)
        assert "health                 SERVING" in table.stdout
        assert cli(stack, "status", "--hours", "0").returncode == 2

        samples = scrape_until(metrics_url, lambda s: value(s, COUNTER) >= 2)
        assert value(samples, COUNTER) == 2
        history = cli(stack, "history", first)
        assert history.returncode == 0, history.stderr
        delivery = next(line for line in history.stdout.splitlines() if "cplan_2027" in line)
        assert f"unknown plan slug '{slug}'" in delivery and "mapped to default plan" in delivery
