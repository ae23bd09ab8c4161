"""`entitlements_client.testing`: the fakes an app uses in its own unit tests answer as the
real clients do (answers, limit rule, usage, idempotency) and raise the same exceptions. That
the methods and parameters match the real clients' is tests/unit/test_client_api.py's."""

from __future__ import annotations

import pytest

from entitlements_client import (
    EntitlementsClient,
    InvalidArgument,
    LimitCheck,
    LimitValue,
    NotFound,
    Snapshot,
    Unavailable,
)
from entitlements_client.testing import (
    UNLIMITED,
    AsyncFakeEntitlementsClient,
    FakeEntitlementsClient,
    Plan,
)

pytestmark = pytest.mark.unit

METER = "aiInsightsPerMonth"
PLANS = {
    "free": Plan(features={"aiInsights"}, limits={"maxHabits": 10, METER: 20}),
    "pro": Plan(features={"aiInsights", "dataExport"}, limits={"maxHabits": UNLIMITED, METER: 500}),
}


def fake(**kwargs: object) -> FakeEntitlementsClient:
    return FakeEntitlementsClient(PLANS, default_plan="free", metered=[METER], **kwargs)  # type: ignore[arg-type]


def add_habit(client: EntitlementsClient | FakeEntitlementsClient, user: str, habits: int) -> str:
    """An app's own code, as it would be written against the real client."""
    if not client.check_limit(user, "maxHabits", current_usage=habits).allowed:
        return "upgrade"
    return "added"


def test_an_apps_function_tested_with_the_fake() -> None:
    client = fake()
    assert add_habit(client, "user_1", 9) == "added"
    assert add_habit(client, "user_1", 10) == "upgrade"
    client.set_plan("user_1", "pro")
    assert add_habit(client, "user_1", 10_000) == "added"


def test_plans_overrides_and_the_limit_rule() -> None:
    client = fake()
    assert client.can_use("u", "aiInsights") and not client.can_use("u", "dataExport")
    client.set_feature("u", "dataExport", True)
    decision = client.check("u", "dataExport")
    assert decision.allowed and decision.reason == "FEATURE_OVERRIDE_ENABLED"
    client.set_feature("u", "aiInsights", False)
    assert not client.can_use("u", "aiInsights")
    client.set_limit("u", "maxHabits", 50)
    assert client.get_limits("u").limits["maxHabits"] == LimitValue(50, False)
    assert client.check_limit("u", "maxHabits", 49) == LimitCheck(True, 50, 1, False)
    client.set_limit("u", "maxHabits", None)
    assert client.check_limit("u", "maxHabits", 4) == LimitCheck(True, 10, 6, False)
    snap = client.snapshot("u")
    assert snap.plan == "free" and METER in snap.metered


def test_the_same_exceptions_as_the_real_client() -> None:
    client = fake()
    with pytest.raises(InvalidArgument, match="teleport"):
        client.can_use("u", "teleport")
    with pytest.raises(InvalidArgument, match="unknown limit"):
        client.check_limit("u", "teleports")
    with pytest.raises(InvalidArgument, match="negative"):
        client.check_limit("u", "maxHabits", current_usage=-5)
    with pytest.raises(InvalidArgument, match="not metered"):
        client.consume("u", "maxHabits")
    with pytest.raises(InvalidArgument, match="amount"):
        client.consume("u", METER, 0)
    with pytest.raises(NotFound):
        client.release("rsv_nonexistent")
    client.fail_with(Unavailable("the service is down"))
    with pytest.raises(Unavailable):
        client.can_use("u", "aiInsights")
    client.fail_with(None)
    assert client.can_use("u", "aiInsights")


def test_metered_usage_counts_and_a_retried_key_counts_once() -> None:
    client = fake()
    first = client.consume("u", METER, 15, idempotency_key="k1")
    assert (first.allowed, first.used, first.remaining, first.limit) == (True, 15, 5, 20)
    again = client.consume("u", METER, 15, idempotency_key="k1")
    assert again.duplicate and again.used == 15
    assert not client.consume("u", METER, 6).allowed
    assert client.check_limit("u", METER, requested=5) == LimitCheck(True, 20, 5, False)
    held = client.reserve("u", METER, 5)
    assert held.allowed and held.remaining == 0
    assert client.get_usage("u").meters[METER].reserved == 5
    assert client.commit(held.reservation_id or "", 2).remaining == 3
    client.set_usage("u", METER, 0)
    report = client.report_usage("u", METER, delta=25)
    assert (report.used, report.remaining) == (25, 0)


def test_on_change_hears_what_the_test_changes() -> None:
    heard: list[tuple[str, Snapshot]] = []
    client = fake(on_change=lambda subject, snap: heard.append((subject, snap)))
    client.set_plan("user_2", "pro")
    assert [(s, snap.plan) for s, snap in heard] == [("user_2", "pro")]


async def test_the_async_fake() -> None:
    async with AsyncFakeEntitlementsClient(PLANS, default_plan="free", metered=[METER]) as c:
        assert await c.wait_synced()
        c.fake.set_plan("u", "pro")
        assert await c.can_use("u", "dataExport")
        assert (await c.check_limit("u", "maxHabits", 10**9)).unlimited
        with pytest.raises(InvalidArgument):
            await c.can_use("u", "teleport")
