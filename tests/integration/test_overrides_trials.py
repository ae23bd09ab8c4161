"""Per-customer overrides and trials (SPEC §10.2, §10.3) against real gRPC and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from service.adapters.postgres.migrate import migrate
from tests.conftest import Harness, rpc_code
from tests.support import Clock, event, now_ms
from tests.support.rpc import apply, can_use, entitlements, sql_rows, subject

pytestmark = pytest.mark.integration

DAY = 86_400_000


async def set_override(h: Harness, **fields: object) -> sync_pb.SetOverrideResponse:
    response: sync_pb.SetOverrideResponse = await h.sync.SetOverride(
        sync_pb.SetOverrideRequest(reason=str(fields.pop("reason", "support ticket 42")), **fields),  # type: ignore[arg-type]
        metadata=h.auth,
    )
    return response


def at(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


async def test_a_feature_granted_and_withheld_whatever_the_plan(harness: Harness) -> None:
    who = subject("ovr_feature")
    granted = await set_override(harness, subject=who, feature="dataExport", enabled=True)
    answer = await can_use(harness, who, "dataExport")
    assert answer.allowed and answer.reason == pb.REASON_FEATURE_OVERRIDE_ENABLED
    assert answer.plan == "free"
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
    await set_override(harness, subject=who, feature="advancedAnalytics", enabled=False)
    withheld = await can_use(harness, who, "advancedAnalytics")
    assert not withheld.allowed and withheld.reason == pb.REASON_FEATURE_OVERRIDE_DISABLED
    assert (await can_use(harness, who, "habitStacking")).allowed  # the rest of pro stays
    ent = await entitlements(harness, who)
    assert ent.plan == "pro" and "advancedAnalytics" not in ent.features
    assert {(o.feature, o.enabled) for o in ent.overrides} == {
        ("dataExport", True),
        ("advancedAnalytics", False),
    }
    removed = await harness.sync.RemoveOverride(
        sync_pb.RemoveOverrideRequest(override_id=granted.override_id, reason="done"),
        metadata=harness.auth,
    )
    assert removed.version > granted.version
    assert (await can_use(harness, who, "dataExport")).reason == pb.REASON_FEATURE_IN_PLAN
    history = await harness.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=harness.auth
    )
    kinds = [e.kind for e in history.entries]
    assert kinds.count(sync_pb.HISTORY_KIND_OVERRIDE) == 2


async def test_a_limit_override_replaces_the_plans_and_expires_by_time(
    harness: Harness, clock: Clock
) -> None:
    who = subject("ovr_limit")
    ends = now_ms() + 10 * DAY
    await set_override(harness, subject=who, limit="maxHabits", value=50, expires_at=at(ends))
    await set_override(harness, subject=who, limit="aiInsightsPerMonth", unlimited=True)
    limits = await harness.entitlements.GetLimits(pb.GetLimitsRequest(subject=who))
    assert limits.limits["maxHabits"].value == 50
    assert limits.limits["aiInsightsPerMonth"].unlimited
    check = await harness.entitlements.CheckLimit(
        pb.CheckLimitRequest(subject=who, limit="maxHabits", current_usage=40, requested=10)
    )
    assert check.allowed and check.valid_until.ToMilliseconds() == ends
    consumed = await usage_grpc.UsageServiceStub(harness.channel).Consume(
        usage_pb.ConsumeRequest(
            subject=who, limit="aiInsightsPerMonth", amount=1000, idempotency_key="k1"
        )
    )
    assert consumed.allowed and consumed.unlimited
    clock.freeze(ends)  # no event: the override ends by time
    limits = await harness.entitlements.GetLimits(pb.GetLimitsRequest(subject=who))
    assert limits.limits["maxHabits"].value == 10


@pytest.mark.parametrize(
    "fields",
    [
        {"feature": "nope", "enabled": True},
        {"limit": "nope", "value": 1},
        {"feature": "dataExport", "limit": "maxHabits"},
        {},
        {"limit": "maxHabits", "value": -1},
        {"feature": "dataExport", "enabled": True, "reason": " "},
        {"limit": "maxHabits", "value": 5, "expires_at": at(now_ms() - 1000)},
    ],
)
async def test_a_bad_override_is_refused_and_changes_nothing(
    harness: Harness, fields: dict[str, object]
) -> None:
    who = subject("ovr_bad")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await set_override(harness, subject=who, **fields)
    assert rpc_code(err.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert not (await entitlements(harness, who)).overrides


async def test_an_override_needs_the_sync_secret(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.sync.SetOverride(
            sync_pb.SetOverrideRequest(
                subject=subject("x"), feature="dataExport", enabled=True, reason="r"
            )
        )
    assert rpc_code(err.value) is grpc.StatusCode.UNAUTHENTICATED


async def test_an_override_reaches_watchers(harness: Harness) -> None:
    who = subject("ovr_watch")
    stream = harness.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest(subjects=[who]))
    first = await stream.read()
    assert isinstance(first, pb.WatchEntitlementsResponse) and first.subject == ""
    await set_override(harness, subject=who, feature="dataExport", enabled=True)
    async with asyncio.timeout(5):
        while True:
            message = await stream.read()
            assert isinstance(message, pb.WatchEntitlementsResponse)
            if message.subject == who:
                break
    assert "dataExport" in message.entitlements.features
    assert message.entitlements.overrides[0].feature == "dataExport"
    stream.cancel()


async def test_a_free_trial_shows_with_its_end_and_the_ending_notice_is_kept(
    harness: Harness,
) -> None:
    who = subject("trial")
    trial_end = now_ms() + 7 * DAY
    active = event("item_active_pro_month", at_ms=now_ms(), subject=who)
    active["data"]["is_free_trial"] = True
    active["data"]["period_end"] = trial_end
    await apply(harness, active)
    ent = await entitlements(harness, who)
    assert ent.plan == "pro" and ent.trial
    assert ent.trial_ends_at.ToMilliseconds() == trial_end
    ending = event("item_active_pro_month", at_ms=now_ms() + 1000, subject=who)
    ending["type"] = "subscriptionItem.freeTrialEnding"
    ending["data"].update(id=active["data"]["id"], is_free_trial=True, period_end=trial_end)
    event_id = "msg_trial_" + secrets.token_hex(4)
    await apply(harness, ending, event_id)
    history = await harness.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=harness.auth
    )
    assert any(
        e.event_id == event_id and e.type == "subscriptionItem.freeTrialEnding"
        for e in history.entries
    )
    paid = event("item_active_pro_month", at_ms=now_ms() + 2000, subject=who)
    paid["data"]["id"] = active["data"]["id"]
    await apply(harness, paid)
    assert not (await entitlements(harness, who)).trial


async def test_verify_rebuilds_overrides_from_their_log(
    harness: Harness, database_url: str
) -> None:
    """Each override row is rebuilt from its logged set and remove: untouched, no difference;
    a row edited in SQL (a limit raised, a removal undone) is reported, naming the column."""
    who = subject("ovr_verify")
    limit = await set_override(harness, subject=who, limit="maxHabits", value=5)
    feature = await set_override(harness, subject=who, feature="dataExport", enabled=True)
    await harness.sync.RemoveOverride(
        sync_pb.RemoveOverrideRequest(override_id=feature.override_id, reason="trial over"),
        metadata=harness.auth,
    )

    async def differences() -> list[str]:
        stream = harness.sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=harness.auth)
        last = [m async for m in stream][-1]
        assert last.finished
        return sorted(d.description for d in last.differences if d.subject == who)

    assert await differences() == []
    await sql_rows(
        database_url,
        "UPDATE overrides SET limit_value = 999 WHERE override_id = $1",
        limit.override_id,
    )
    await sql_rows(
        database_url,
        "UPDATE overrides SET removed_at_ms = NULL, remove_reason = NULL WHERE override_id = $1",
        feature.override_id,
    )
    found = await differences()
    assert len(found) == 2
    assert f"override {limit.override_id}: limit_value live 999, rebuilt 5" in found
    (undone,) = [d for d in found if feature.override_id in d]
    assert undone.startswith(f"override {feature.override_id}: removed_at_ms live None, rebuilt ")
    assert undone.endswith("; remove_reason live None, rebuilt 'trial over'")


async def test_overrides_set_before_the_log_existed_are_backfilled(
    harness: Harness, database_url: str
) -> None:
    """Migration 0012 logs the overrides already there (set, and removed): verify agrees."""
    who = subject("ovr_backfill")
    await set_override(harness, subject=who, limit="maxGoals", unlimited=True)
    gone = await set_override(harness, subject=who, feature="dataExport", enabled=False)
    await harness.sync.RemoveOverride(
        sync_pb.RemoveOverrideRequest(override_id=gone.override_id, reason=""),
        metadata=harness.auth,
    )
    # The database as it was before migration 0012, then migrated again.
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "DROP TABLE override_events; DELETE FROM schema_migrations WHERE version = 12"
        )
        assert await migrate(connection) == [12]
    finally:
        await connection.close()
    stream = harness.sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=harness.auth)
    last = [m async for m in stream][-1]
    assert [d.description for d in last.differences if d.subject == who] == []
    logged = await sql_rows(
        database_url,
        "SELECT kind FROM override_events WHERE override_id = $1 ORDER BY seq",
        gone.override_id,
    )
    assert [r["kind"] for r in logged] == ["set", "remove"]
