"""Manual grants: a plan for a subject until expiry or revocation, visible in entitlements,
valid_until and history; only with the sync secret."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from tests.conftest import Harness
from tests.support import event, now_ms
from tests.support.rpc import apply, can_use, entitlements, plan_of, subject

pytestmark = pytest.mark.integration

DAY = 86_400_000


def ts(ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(ms)
    return t


async def grant(
    h: Harness, who: str, plan: str, expires_ms: int | None = None
) -> sync_pb.GrantPlanResponse:
    request = sync_pb.GrantPlanRequest(subject=who, plan=plan, reason="support extension")
    if expires_ms is not None:
        request.expires_at.CopyFrom(ts(expires_ms))
    response: sync_pb.GrantPlanResponse = await h.sync.GrantPlan(request, metadata=h.auth)
    return response


async def test_grant_until_expiry_then_free(harness: Harness) -> None:
    who = subject("grant")
    expires = now_ms() + DAY
    r = await grant(harness, who, "pro", expires)
    assert r.grant_id and (r.previous_plan, r.plan) == ("free", "pro")
    ent = await entitlements(harness, who)
    assert (
        ent.status == pb.ENTITLEMENT_STATUS_GRANTED and ent.valid_until.ToMilliseconds() == expires
    )
    check = await can_use(harness, who, "dataExport")
    assert check.allowed and check.reason == pb.REASON_GRANTED_BY_OVERRIDE
    harness.clock.freeze(expires)
    assert await plan_of(harness, who) == "free"


async def test_revoke_ends_a_grant_and_history_shows_both(harness: Harness) -> None:
    who = subject("revoke")
    r = await grant(harness, who, "lifetime")
    assert await plan_of(harness, who) == "lifetime"
    revoked = await harness.sync.RevokeGrant(
        sync_pb.RevokeGrantRequest(grant_id=r.grant_id, reason="refunded"), metadata=harness.auth
    )
    assert (revoked.subject, revoked.previous_plan, revoked.plan) == (who, "lifetime", "free")
    assert await plan_of(harness, who) == "free"
    history = await harness.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=harness.auth
    )
    kinds = [e.kind for e in history.entries]
    assert sync_pb.HISTORY_KIND_GRANT in kinds
    changes = [
        (e.from_plan, e.to_plan, e.type)
        for e in history.entries
        if e.kind == sync_pb.HISTORY_KIND_PLAN_CHANGE
    ]
    assert changes == [("lifetime", "free", "revoke"), ("free", "lifetime", "grant")]
    grant_entry = next(e for e in history.entries if e.kind == sync_pb.HISTORY_KIND_GRANT)
    assert "support extension" in grant_entry.note and "refunded" in grant_entry.note
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.sync.RevokeGrant(
            sync_pb.RevokeGrantRequest(grant_id=r.grant_id), metadata=harness.auth
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grant_below_a_paid_plan_changes_nothing_visible(harness: Harness) -> None:
    who = subject("paid")
    await apply(harness, event("item_active_lifetime", at_ms=now_ms(), subject=who))
    r = await grant(harness, who, "pro")
    assert (r.previous_plan, r.plan) == ("lifetime", "lifetime")


@pytest.mark.parametrize(
    ("plan", "reason", "expires_offset", "problem"),
    [
        ("gold", "x", None, "unknown plan 'gold'"),
        ("pro", " ", None, "reason is required"),
        ("pro", "x", -1000, "expires_at must be in the future"),
    ],
)
async def test_bad_grants_are_invalid_argument(
    harness: Harness, plan: str, reason: str, expires_offset: int | None, problem: str
) -> None:
    request = sync_pb.GrantPlanRequest(subject="user_bad_grant", plan=plan, reason=reason)
    if expires_offset is not None:
        request.expires_at.CopyFrom(ts(now_ms() + expires_offset))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.sync.GrantPlan(request, metadata=harness.auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (err.value.details() or "")
    assert await plan_of(harness, "user_bad_grant") == "free"


async def test_grants_need_the_sync_secret(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.sync.GrantPlan(
            sync_pb.GrantPlanRequest(subject="user_nosecret", plan="pro", reason="x")
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await plan_of(harness, "user_nosecret") == "free"
