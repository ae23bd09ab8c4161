"""SPEC §7 acceptance cases that need no gateway, driven through ApplyBillingEvent against a
real PostgreSQL and a real gRPC server on port 0."""

from __future__ import annotations

import asyncio
import logging

import pytest

from entitlements.v1 import entitlement_service_pb2 as pb
from tests.conftest import Harness
from tests.support import event, new_event_id, now_ms
from tests.support.rpc import apply, can_use, entitlements, outcome_name, plan_of, subject

pytestmark = pytest.mark.integration

PRO_FEATURES = [
    "advancedAnalytics",
    "aiInsights",
    "customThemes",
    "dataExport",
    "habitStacking",
    "identitySystem",
    "prioritySupport",
]
DAY = 86_400_000


async def test_tc01_unknown_and_new_user_is_free(harness: Harness) -> None:
    for who in (subject("never_seen"), subject("created")):
        if "created" in who:
            r = await apply(harness, event("user_created", at_ms=now_ms(), subject=who))
            assert outcome_name(r) == "APPLIED" and r.plan == "free"
        limits = await harness.entitlements.GetLimits(pb.GetLimitsRequest(subject=who))
        assert limits.plan == "free"
        assert limits.limits["maxHabits"].value == 10 and not limits.limits["maxHabits"].unlimited
        assert limits.limits["maxGoals"].value == 3
        assert (await can_use(harness, who, "aiInsights")).allowed
        denied = await can_use(harness, who, "advancedAnalytics")
        assert not denied.allowed and denied.reason == pb.REASON_FEATURE_NOT_IN_PLAN
        assert denied.plan == "free" and not denied.HasField("valid_until")


async def test_tc02_active_pro_monthly(harness: Harness) -> None:
    who = subject("tc02")
    r = await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
    assert (outcome_name(r), r.subject, r.previous_plan, r.plan) == ("APPLIED", who, "free", "pro")
    ent = await entitlements(harness, who)
    assert ent.plan == "pro" and list(ent.features) == PRO_FEATURES
    assert ent.status == pb.ENTITLEMENT_STATUS_ACTIVE
    metered = ent.limits.pop("aiInsightsPerMonth")  # the metered addition (SPEC §10.1)
    assert all(limit.unlimited for limit in ent.limits.values())
    assert metered.value == 500 and not metered.unlimited
    assert (await can_use(harness, who, "advancedAnalytics")).allowed


async def test_tc03_annual_is_the_same_plan(harness: Harness) -> None:
    who = subject("tc03")
    await apply(harness, event("item_active_pro_annual", at_ms=now_ms(), subject=who))
    assert await plan_of(harness, who) == "pro"
    who2 = subject("tc03b")
    await apply(
        harness,
        event("item_active_pro_month", at_ms=now_ms(), subject=who2, plan_slug="pro_yearly"),
    )
    assert await plan_of(harness, who2) == "pro"


async def test_tc04_lifetime_stays_lifetime(harness: Harness) -> None:
    t = now_ms()
    for later in ("item_ended_pro", "item_canceled_pro"):
        who = subject("tc04")
        await apply(harness, event("item_active_lifetime", at_ms=t, subject=who))
        assert await plan_of(harness, who) == "lifetime"
        ending = event(
            later, at_ms=t, subject=who, item_id="subi_2x9Life0001", plan_slug="lifetime"
        )
        ending["timestamp"] = t + DAY
        r = await apply(harness, ending)
        assert outcome_name(r) == "APPLIED"
        ent = await entitlements(harness, who)
        assert (ent.plan, ent.status) == ("lifetime", pb.ENTITLEMENT_STATUS_LIFETIME)
        assert (await can_use(harness, who, "dataExport")).reason == pb.REASON_LIFETIME


async def test_lifetime_survives_end_arriving_before_active(harness: Harness) -> None:
    t = now_ms()
    who = subject("life_ooo")
    ended = event("item_ended_pro", at_ms=t, subject=who, item_id="subi_L", plan_slug="lifetime")
    ended["timestamp"] = t + DAY
    active = event("item_active_lifetime", at_ms=t, subject=who, item_id="subi_L")
    await apply(harness, ended)
    await apply(harness, active)
    assert await plan_of(harness, who) == "lifetime"


async def test_tc05_canceled_keeps_pro_until_period_end_then_free(harness: Harness) -> None:
    t = now_ms()
    who = subject("tc05")
    await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
    period_end = t + 10 * DAY
    canceled = event("item_canceled_pro", at_ms=t - DAY, subject=who, period_end=period_end)
    canceled["timestamp"] = t
    r = await apply(harness, canceled)
    assert outcome_name(r) == "APPLIED" and r.plan == "pro"
    ent = await entitlements(harness, who)
    assert ent.status == pb.ENTITLEMENT_STATUS_CANCELED
    assert ent.valid_until.ToMilliseconds() == period_end
    check = await can_use(harness, who, "dataExport")
    assert check.allowed and check.reason == pb.REASON_CANCELED_UNTIL_PERIOD_END
    assert check.valid_until.ToMilliseconds() == period_end
    # Time passes: no event arrives at period_end.
    harness.clock.freeze(period_end - 1)
    assert await plan_of(harness, who) == "pro"
    harness.clock.freeze(period_end)
    assert await plan_of(harness, who) == "free"
    # `ended` arriving afterwards changes nothing further.
    ended = event("item_ended_pro", at_ms=t - DAY, subject=who)
    ended["timestamp"] = period_end
    await apply(harness, ended)
    assert await plan_of(harness, who) == "free"


async def test_tc05_canceled_item_turns_free_in_real_time_with_no_event(harness: Harness) -> None:
    t = now_ms()
    who = subject("tc05_real")
    await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
    canceled = event("item_canceled_pro", at_ms=t - DAY, subject=who, period_end=t + 1500)
    canceled["timestamp"] = t
    await apply(harness, canceled)
    first = await can_use(harness, who, "advancedAnalytics")
    assert first.allowed and first.valid_until.ToMilliseconds() == t + 1500
    await asyncio.sleep(max(0.0, (t + 1600 - now_ms()) / 1000))
    after = await can_use(harness, who, "advancedAnalytics")
    assert not after.allowed and after.plan == "free"


async def test_tc05_validation_plan_delete_downgrades_at_once(harness: Harness) -> None:
    who = subject("tc05_legacy")
    t = now_ms()
    created = {
        "type": "billing.subscription.created",
        "timestamp": t,
        "data": {"id": "sub_legacy_" + who, "user_id": who, "plan": "pro"},
    }
    await apply(harness, created)
    assert await plan_of(harness, who) == "pro"
    deleted = {**created, "type": "billing.subscription.deleted", "timestamp": t + 1}
    r = await apply(harness, deleted)
    assert (outcome_name(r), r.previous_plan, r.plan) == ("APPLIED", "pro", "free")


async def test_tc06_monthly_to_annual_stays_pro_in_any_order(harness: Harness) -> None:
    t = now_ms()
    # subscriptionItem.updated on the same item
    who = subject("tc06a")
    await apply(harness, event("item_active_pro_month", at_ms=t, subject=who))
    updated = event("item_active_pro_annual", at_ms=t, subject=who, item_id="subi_2x9Pro00001")
    updated["type"] = "subscriptionItem.updated"
    updated["timestamp"] = t + 1000
    await apply(harness, updated)
    assert await plan_of(harness, who) == "pro"
    # new item active + old item ended, both orders
    for order in ("new_first", "old_first"):
        who = subject("tc06b")
        await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
        new = event("item_active_pro_annual", at_ms=t, subject=who, item_id="subi_annual")
        old_ended = event("item_ended_pro", at_ms=t, subject=who)
        first, second = (new, old_ended) if order == "new_first" else (old_ended, new)
        await apply(harness, first)
        mid = await plan_of(harness, who)
        await apply(harness, second)
        assert (await plan_of(harness, who), order) == ("pro", order)
        if order == "new_first":
            assert mid == "pro"


async def test_tc07_same_delivery_twice_is_duplicate(harness: Harness) -> None:
    who = subject("tc07")
    payload = event("item_active_pro_month", at_ms=now_ms(), subject=who)
    event_id = new_event_id()
    first = await apply(harness, payload, event_id)
    second = await apply(harness, payload, event_id)
    assert outcome_name(first) == "APPLIED" and outcome_name(second) == "DUPLICATE"
    assert second.version == first.version and second.plan == "pro"


async def test_tc07_ten_concurrent_deliveries_change_state_once(harness: Harness) -> None:
    who = subject("tc07c")
    payload = event("item_active_pro_month", at_ms=now_ms(), subject=who)
    event_id = new_event_id()
    results = await asyncio.gather(*(apply(harness, payload, event_id) for _ in range(10)))
    outcomes = sorted(outcome_name(r) for r in results)
    assert outcomes == ["APPLIED"] + ["DUPLICATE"] * 9
    history = await harness.store.history(who, 100)
    assert [r.kind for r in history].count("delivery") == 1
    assert [r.kind for r in history].count("plan_change") == 1
    current = (await entitlements(harness, who)).version
    assert {r.version for r in results} == {current}


async def test_tc08_billing_event_for_never_seen_subject_is_applied(harness: Harness) -> None:
    who = subject("tc08")
    r = await apply(harness, event("item_active_org_pro", at_ms=now_ms(), subject=who))
    assert outcome_name(r) == "APPLIED"
    assert await plan_of(harness, who) == "pro"


async def test_tc09_unknown_slug_defaults_warns_and_marks(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    who = subject("tc09")
    caplog.set_level(logging.WARNING)
    payload = event(
        "item_active_pro_month", at_ms=now_ms(), subject=who, plan_slug="some_unknown_thing"
    )
    payload["data"]["plan_id"] = payload["data"]["plan"]["id"] = "cplan_unknown"
    r = await apply(harness, payload)
    assert outcome_name(r) == "APPLIED" and r.plan == "free"
    assert any("some_unknown_thing" in n for n in r.notes)
    assert any("some_unknown_thing" in rec.getMessage() for rec in caplog.records)
    history = await harness.store.history(who, 10)
    assert "some_unknown_thing" in history[0].note


async def test_out_of_order_older_active_after_newer_ended_changes_nothing(
    harness: Harness,
) -> None:
    t = now_ms()
    who = subject("ooo")
    ended = event("item_ended_pro", at_ms=t, subject=who)
    ended["timestamp"] = t + 1000
    active = event("item_active_pro_month", at_ms=t, subject=who)
    r1 = await apply(harness, ended)
    r2 = await apply(harness, active)
    assert outcome_name(r1) == "APPLIED" and outcome_name(r2) == "STALE"
    assert await plan_of(harness, who) == "free"


async def test_equal_timestamps_resolve_by_lifecycle_whatever_the_order(harness: Harness) -> None:
    t = now_ms()
    for order in ((0, 1), (1, 0)):
        who = subject("tie")
        pair = [
            event("item_active_pro_month", at_ms=t, subject=who),
            event("item_ended_pro", at_ms=t, subject=who, timestamp_ms=t),
        ]
        for i in order:
            await apply(harness, pair[i])
        assert await plan_of(harness, who) == "free"


async def test_organization_payer(harness: Harness) -> None:
    org = "org_" + new_event_id()[4:14]
    member = subject("member")
    payload = event("item_active_org_pro", at_ms=now_ms(), subject=org)
    payload["data"]["payer"]["user_id"] = member
    r = await apply(harness, payload)
    assert r.subject == org
    assert await plan_of(harness, org) == "pro"
    assert await plan_of(harness, member) == "free"


async def test_free_plan_item_events_never_downgrade_a_paid_subject(harness: Harness) -> None:
    t = now_ms()
    who = subject("freeitem")
    await apply(harness, event("item_active_pro_month", at_ms=t, subject=who))
    later = t + 1000
    for name in ("subscription_created_free", "item_upcoming_free"):
        await apply(harness, event(name, at_ms=t, subject=who, timestamp_ms=later))
        assert await plan_of(harness, who) == "pro"


async def test_past_due_grace(harness: Harness) -> None:
    t = now_ms()
    who = subject("pastdue")
    await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
    past_due = event("item_past_due_pro", at_ms=t, subject=who, past_due_at=t, timestamp_ms=t)
    past_due["type"] = "subscriptionItem.past_due"
    await apply(harness, past_due)
    grace_end = t + 3 * DAY
    check = await can_use(harness, who, "dataExport")
    assert check.allowed and check.reason == pb.REASON_IN_PAST_DUE_GRACE
    assert check.valid_until.ToMilliseconds() == grace_end
    harness.clock.freeze(grace_end - 1)
    assert (await can_use(harness, who, "dataExport")).allowed
    harness.clock.freeze(grace_end)
    assert not (await can_use(harness, who, "dataExport")).allowed


async def test_user_deleted_tombstone_blocks_late_older_events(harness: Harness) -> None:
    t = now_ms()
    who = subject("deleted")
    await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
    r = await apply(harness, event("user_deleted", at_ms=t, subject=who, timestamp_ms=t))
    assert (outcome_name(r), r.plan) == ("APPLIED", "free")
    late = event("item_active_pro_month", at_ms=t - DAY, subject=who, item_id="subi_late")
    late["timestamp"] = t - 1
    assert outcome_name(await apply(harness, late)) == "STALE"
    assert await plan_of(harness, who) == "free"


async def test_other_outcomes_are_stored(harness: Harness) -> None:
    who = subject("other")
    unknown = {"type": "session.created", "data": {"id": "sess_1"}, "timestamp": now_ms()}
    assert outcome_name(await apply(harness, unknown)) == "IGNORED"
    r = await apply(harness, event("payment_attempt_paid", at_ms=now_ms(), subject=who))
    assert outcome_name(r) == "APPLIED" and await plan_of(harness, who) == "free"
    broken = await harness.sync.ApplyBillingEvent(
        __import__(
            "entitlements.v1.billing_sync_service_pb2", fromlist=["x"]
        ).ApplyBillingEventRequest(
            event_id="msg_broken_" + who, type="subscriptionItem.active", payload=b"{not json"
        ),
        metadata=harness.auth,
    )
    assert outcome_name(broken) == "UNPARSEABLE"
    async with harness.store._pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT outcome, payload FROM deliveries WHERE event_id = $1", "msg_broken_" + who
        )
    assert stored is not None
    assert stored["outcome"] == "UNPARSEABLE" and stored["payload"] == b"{not json"


async def test_version_grows_with_each_change_and_history_is_newest_first(
    harness: Harness,
) -> None:
    t = now_ms()
    who = subject("hist")
    r1 = await apply(harness, event("item_active_pro_month", at_ms=t, subject=who))
    ended = event("item_ended_pro", at_ms=t, subject=who, timestamp_ms=t + 1)
    r2 = await apply(harness, ended)
    assert 0 < r1.version < r2.version
    assert (await entitlements(harness, who)).version == r2.version
    from entitlements.v1 import billing_sync_service_pb2 as sync_pb

    hist = await harness.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=harness.auth
    )
    changes = [
        (e.from_plan, e.to_plan) for e in hist.entries if e.kind == sync_pb.HISTORY_KIND_PLAN_CHANGE
    ]
    assert changes == [("pro", "free"), ("free", "pro")]
    deliveries = [e.type for e in hist.entries if e.kind == sync_pb.HISTORY_KIND_DELIVERY]
    assert deliveries == ["subscriptionItem.ended", "subscriptionItem.active"]


async def test_user_deleted_scrubs_personal_data_from_stored_payloads(harness: Harness) -> None:
    t = now_ms()
    who = subject("scrub")
    await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
    await apply(harness, event("user_deleted", at_ms=t, subject=who, timestamp_ms=t))
    late = event("item_canceled_pro", at_ms=t - DAY, subject=who, timestamp_ms=t - 5)
    await apply(harness, late)  # a late, older event for the deleted subject
    async with harness.store._pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload, scrubbed_at FROM deliveries WHERE subject = $1", who
        )
    assert len(rows) == 3
    for row in rows:
        assert b"ada@example.com" not in row["payload"] and b"Lovelace" not in row["payload"]
        assert row["scrubbed_at"] is not None
    assert await plan_of(harness, who) == "free"


async def test_payloads_past_retention_are_scrubbed(harness: Harness) -> None:
    who = subject("retention")
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
    assert await harness.store.scrub_older_than(3600) == 0  # younger than the retention
    await asyncio.sleep(0.01)
    assert await harness.store.scrub_older_than(0) >= 1
    async with harness.store._pool.acquire() as conn:
        payload = await conn.fetchval("SELECT payload FROM deliveries WHERE subject = $1", who)
    assert b"ada@example.com" not in payload
    assert await plan_of(harness, who) == "pro"  # state is untouched
