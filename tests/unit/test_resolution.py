"""Every entitlement rule of SPEC §3, resolved at chosen instants from plain values."""

from __future__ import annotations

import pytest

from service.config import load_catalog
from service.domain.events import ItemStatus
from service.domain.limits import limit_decision
from service.domain.resolution import (
    EntitlementStatus,
    Grant,
    ItemState,
    Reason,
    SubjectState,
    feature_decision,
    resolve,
)

pytestmark = pytest.mark.unit

CATALOG = load_catalog(None)
GRACE_MS = CATALOG.past_due_grace_seconds * 1000
T = 1_800_000_000_000
DAY = 86_400_000


def item(
    status: ItemStatus,
    slug: str = "pro",
    *,
    item_id: str = "subi_1",
    period_end: int | None = None,
    past_due_at: int | None = None,
    event_ms: int = T - DAY,
    ever_active: bool = False,
) -> ItemState:
    return ItemState(item_id, status, slug, None, period_end, past_due_at, event_ms, ever_active)


def state(
    *items: ItemState, grants: tuple[Grant, ...] = (), deleted_at: int | None = None
) -> SubjectState:
    return SubjectState("user_1", items, grants, deleted_at, version=3)


def at(s: SubjectState, now: int = T) -> tuple[str, EntitlementStatus, int | None]:
    e = resolve(s, CATALOG, now)
    return e.plan.name, e.status, e.valid_until_ms


def test_unknown_subject_has_default_plan_forever() -> None:
    e = resolve(SubjectState("user_new"), CATALOG, T)
    assert (e.plan.name, e.status, e.valid_until_ms, e.version) == (
        "free",
        EntitlementStatus.DEFAULT,
        None,
        0,
    )
    assert feature_decision(e, "aiInsights") == (True, Reason.FEATURE_IN_PLAN)
    assert feature_decision(e, "advancedAnalytics") == (False, Reason.FEATURE_NOT_IN_PLAN)
    assert e.limits["maxHabits"].value == 10 and e.limits["maxGoals"].value == 3


def test_active_item_entitles_without_end() -> None:
    assert at(state(item(ItemStatus.ACTIVE))) == ("pro", EntitlementStatus.ACTIVE, None)


@pytest.mark.parametrize(
    "status",
    [
        ItemStatus.ENDED,
        ItemStatus.EXPIRED,
        ItemStatus.ABANDONED,
        ItemStatus.INCOMPLETE,
        ItemStatus.UPCOMING,
    ],
)
def test_non_entitling_statuses(status: ItemStatus) -> None:
    assert at(state(item(status, period_end=T + DAY)))[0] == "free"


def test_canceled_keeps_plan_until_period_end() -> None:
    s = state(item(ItemStatus.CANCELED, period_end=T + DAY))
    assert at(s) == ("pro", EntitlementStatus.CANCELED, T + DAY)
    assert at(s, T + DAY - 1)[0] == "pro"
    assert at(s, T + DAY) == ("free", EntitlementStatus.DEFAULT, None)
    e = resolve(s, CATALOG, T)
    assert feature_decision(e, "dataExport") == (True, Reason.CANCELED_UNTIL_PERIOD_END)


def test_canceled_without_period_end_lasts_until_ended() -> None:
    assert at(state(item(ItemStatus.CANCELED))) == ("pro", EntitlementStatus.CANCELED, None)


def test_past_due_grace_from_past_due_at() -> None:
    s = state(item(ItemStatus.PAST_DUE, past_due_at=T - DAY))
    end = T - DAY + GRACE_MS
    assert at(s) == ("pro", EntitlementStatus.PAST_DUE, end)
    assert at(s, end)[0] == "free"
    e = resolve(s, CATALOG, T)
    assert feature_decision(e, "habitStacking") == (True, Reason.IN_PAST_DUE_GRACE)


def test_past_due_without_past_due_at_counts_from_event_time() -> None:
    s = state(item(ItemStatus.PAST_DUE, event_ms=T - 2 * DAY))
    assert at(s)[2] == T - 2 * DAY + GRACE_MS


def test_lifetime_stays_after_end_or_cancel() -> None:
    for status in (ItemStatus.ENDED, ItemStatus.CANCELED, ItemStatus.EXPIRED):
        s = state(item(status, "lifetime", ever_active=True, period_end=T - 1))
        assert at(s) == ("lifetime", EntitlementStatus.LIFETIME, None)


def test_lifetime_never_active_grants_nothing() -> None:
    assert at(state(item(ItemStatus.INCOMPLETE, "lifetime")))[0] == "free"


def test_highest_rank_wins_and_free_items_never_downgrade() -> None:
    s = state(
        item(ItemStatus.ACTIVE, "free_user", item_id="subi_free"),
        item(ItemStatus.ACTIVE, "pro", item_id="subi_pro"),
    )
    assert at(s)[0] == "pro"
    s2 = state(
        item(ItemStatus.ACTIVE, "pro", item_id="subi_pro"),
        item(ItemStatus.ACTIVE, "lifetime", item_id="subi_life"),
    )
    assert at(s2)[0] == "lifetime"


def test_monthly_to_annual_switch_stays_pro() -> None:
    old = item(ItemStatus.ENDED, "pro", item_id="subi_month")
    new = item(ItemStatus.ACTIVE, "pro_yearly", item_id="subi_year")
    assert at(state(old, new))[0] == "pro"


def test_valid_until_skips_ends_that_change_nothing() -> None:
    s = state(
        item(ItemStatus.CANCELED, item_id="a", period_end=T + DAY),
        item(ItemStatus.CANCELED, item_id="b", period_end=T + 3 * DAY),
    )
    assert at(s) == ("pro", EntitlementStatus.CANCELED, T + 3 * DAY)
    # An active pro item means the canceled one's end changes nothing.
    s2 = state(
        item(ItemStatus.CANCELED, item_id="a", period_end=T + DAY),
        item(ItemStatus.ACTIVE, item_id="b"),
    )
    assert at(s2) == ("pro", EntitlementStatus.ACTIVE, None)


def test_valid_until_reports_a_status_change() -> None:
    s = state(
        item(ItemStatus.PAST_DUE, item_id="a", past_due_at=T),
        item(ItemStatus.CANCELED, item_id="b", period_end=T + GRACE_MS + DAY),
    )
    assert at(s) == ("pro", EntitlementStatus.CANCELED, T + GRACE_MS + DAY)


def test_grants() -> None:
    s = state(grants=(Grant("pro", T - DAY, T + DAY),))
    assert at(s) == ("pro", EntitlementStatus.GRANTED, T + DAY)
    assert feature_decision(resolve(s, CATALOG, T), "dataExport") == (
        True,
        Reason.GRANTED_BY_OVERRIDE,
    )
    assert at(s, T + DAY)[0] == "free"
    assert at(state(grants=(Grant("pro", T - DAY),)))[2] is None
    assert at(state(grants=(Grant("no_such_plan", T - DAY),)))[0] == "free"


def test_deletion_tombstone_ends_older_items_and_grants() -> None:
    s = state(
        item(ItemStatus.ACTIVE, "lifetime", event_ms=T - DAY, ever_active=True),
        grants=(Grant("pro", T - DAY),),
        deleted_at=T - 1,
    )
    assert at(s)[0] == "free"
    newer = state(item(ItemStatus.ACTIVE, event_ms=T), deleted_at=T - 1)
    assert at(newer)[0] == "pro"


def test_unknown_slug_resolves_to_default() -> None:
    assert at(state(item(ItemStatus.ACTIVE, "some_unknown_thing")))[0] == "free"


def test_limit_decisions() -> None:
    free = resolve(state(), CATALOG, T)
    d = limit_decision(free, "maxHabits", 9, 1)
    assert (d.allowed, d.remaining, d.limit.value) == (True, 1, 10)
    assert not limit_decision(free, "maxHabits", 10, 0).allowed  # 0 taken as 1
    assert not limit_decision(free, "maxGoals", 2, 2).allowed
    pro = resolve(state(item(ItemStatus.ACTIVE)), CATALOG, T)
    d = limit_decision(pro, "maxGoals", 10**9, 5)
    assert d.allowed and d.limit.unlimited
