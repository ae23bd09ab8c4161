"""The domain ↔ wire mappings of EntitlementService and BillingSyncService's answers in one
module: enums, timestamps, limits and the answers' messages (the servicers call these). The
UsageService answers are built by usage_api.py, Watch's by watch.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from service.application.reconcile import ReconcileStatus
from service.application.records import HistoryRow
from service.application.usage import MeterUsage
from service.domain.bounds import wire_ms
from service.domain.catalog import Catalog, LimitValue
from service.domain.deliveries import ApplyResult, Outcome
from service.domain.limits import LimitDecision
from service.domain.resolution import (
    Entitlements,
    EntitlementStatus,
    Override,
    Reason,
    feature_decision,
)

REASONS: Mapping[Reason, int] = {
    Reason.FEATURE_IN_PLAN: pb.REASON_FEATURE_IN_PLAN,
    Reason.FEATURE_NOT_IN_PLAN: pb.REASON_FEATURE_NOT_IN_PLAN,
    Reason.GRANTED_BY_OVERRIDE: pb.REASON_GRANTED_BY_OVERRIDE,
    Reason.IN_PAST_DUE_GRACE: pb.REASON_IN_PAST_DUE_GRACE,
    Reason.CANCELED_UNTIL_PERIOD_END: pb.REASON_CANCELED_UNTIL_PERIOD_END,
    Reason.LIFETIME: pb.REASON_LIFETIME,
    Reason.FEATURE_OVERRIDE_ENABLED: pb.REASON_FEATURE_OVERRIDE_ENABLED,
    Reason.FEATURE_OVERRIDE_DISABLED: pb.REASON_FEATURE_OVERRIDE_DISABLED,
}
STATUSES: Mapping[EntitlementStatus, int] = {
    EntitlementStatus.DEFAULT: pb.ENTITLEMENT_STATUS_DEFAULT,
    EntitlementStatus.ACTIVE: pb.ENTITLEMENT_STATUS_ACTIVE,
    EntitlementStatus.CANCELED: pb.ENTITLEMENT_STATUS_CANCELED,
    EntitlementStatus.PAST_DUE: pb.ENTITLEMENT_STATUS_PAST_DUE,
    EntitlementStatus.LIFETIME: pb.ENTITLEMENT_STATUS_LIFETIME,
    EntitlementStatus.GRANTED: pb.ENTITLEMENT_STATUS_GRANTED,
}


def timestamp(ms: int | None) -> Timestamp | None:
    """A wire timestamp; None for an instant it cannot carry (it never raises on a read)."""
    carried = wire_ms(ms)
    if carried is None:
        return None
    ts = Timestamp()
    ts.FromMilliseconds(carried)
    return ts


def limits(limits: Mapping[str, LimitValue]) -> dict[str, pb.Limit]:
    return {name: pb.Limit(value=v.value, unlimited=v.unlimited) for name, v in limits.items()}


def metered_periods(ent: Entitlements) -> list[pb.MeteredLimit]:
    """Each metered limit's current period (no usage: that is read where it is answered)."""
    return [
        pb.MeteredLimit(
            limit=name,
            period_start=timestamp(period.start_ms),
            resets_at=timestamp(period.end_ms),
        )
        for name, period in sorted(ent.meter_periods.items())
    ]


def can_use_message(ent: Entitlements, feature: str) -> pb.CanUseResponse:
    allowed, reason = feature_decision(ent, feature)
    return pb.CanUseResponse(
        allowed=allowed,
        plan=ent.plan.name,
        reason=REASONS[reason],  # type: ignore[arg-type]
        valid_until=timestamp(ent.valid_until_ms),
    )


def check_limit_message(
    ent: Entitlements, decision: LimitDecision, valid_until_ms: int | None
) -> pb.CheckLimitResponse:
    return pb.CheckLimitResponse(
        allowed=decision.allowed,
        limit=decision.limit.value,
        remaining=decision.remaining,
        unlimited=decision.limit.unlimited,
        plan=ent.plan.name,
        valid_until=timestamp(valid_until_ms),
    )


def limits_message(ent: Entitlements) -> pb.GetLimitsResponse:
    return pb.GetLimitsResponse(
        plan=ent.plan.name,
        limits=limits(ent.limits),
        valid_until=timestamp(ent.shown_until_ms),
        metered=metered_periods(ent),
    )


def override_message(o: Override) -> pb.Override:
    return pb.Override(
        override_id=o.override_id,
        feature=o.feature or "",
        limit=o.limit or "",
        enabled=o.enabled,
        value=pb.Limit(value=o.value.value, unlimited=o.value.unlimited) if o.value else None,
        expires_at=timestamp(o.expires_at_ms),
        reason=o.reason,
    )


def entitlements_message(ent: Entitlements) -> pb.GetEntitlementsResponse:
    return pb.GetEntitlementsResponse(
        subject=ent.subject,
        plan=ent.plan.name,
        features=sorted(ent.features),
        limits=limits(ent.limits),
        status=STATUSES.get(ent.status, pb.ENTITLEMENT_STATUS_UNSPECIFIED),  # type: ignore[arg-type]
        valid_until=timestamp(ent.shown_until_ms),
        version=ent.version,
        overrides=[override_message(o) for o in ent.overrides],
        trial=ent.trial,
        trial_ends_at=timestamp(ent.trial_ends_at_ms),
        metered=metered_periods(ent),
    )


def plans_message(catalog: Catalog) -> pb.ListPlansResponse:
    return pb.ListPlansResponse(
        plans=[
            pb.Plan(
                name=p.name,
                rank=p.rank,
                lifetime=p.lifetime,
                is_default=p.name == catalog.default_plan_name,
                features=sorted(p.features),
                limits=limits(p.limits),
                clerk_slugs=list(p.clerk_slugs),
                clerk_plan_ids=list(p.clerk_plan_ids),
            )
            for p in catalog.plans_by_rank()
        ],
        default_plan=catalog.default_plan_name,
        catalog_fingerprint=catalog.fingerprint,
        features=sorted(catalog.features),
        limits=list(catalog.limit_names),
    )


class ChangeFields(TypedDict):
    subject: str
    plan: str
    previous_plan: str
    version: int


def change_fields(result: ApplyResult) -> ChangeFields:
    """The fields every response about one subject's change carries (grant, revoke)."""
    return ChangeFields(
        subject=result.subject or "",
        plan=result.plan or "",
        previous_plan=result.previous_plan or "",
        version=result.version,
    )


OUTCOMES: Mapping[str, int] = {
    Outcome.APPLIED: sync_pb.APPLIED,
    Outcome.DUPLICATE: sync_pb.DUPLICATE,
    Outcome.STALE: sync_pb.STALE,
    Outcome.IGNORED: sync_pb.IGNORED,
    Outcome.UNPARSEABLE: sync_pb.UNPARSEABLE,
}


HISTORY_KINDS: Mapping[str, int] = {
    "delivery": sync_pb.HISTORY_KIND_DELIVERY,
    "plan_change": sync_pb.HISTORY_KIND_PLAN_CHANGE,
    "grant": sync_pb.HISTORY_KIND_GRANT,
    "override": sync_pb.HISTORY_KIND_OVERRIDE,
}
RECONCILE_STATUSES: Mapping[ReconcileStatus, int] = {
    ReconcileStatus.IN_SYNC: sync_pb.RECONCILE_STATUS_IN_SYNC,
    ReconcileStatus.REPAIRED: sync_pb.RECONCILE_STATUS_REPAIRED,
    ReconcileStatus.SNAPSHOT_OLDER: sync_pb.RECONCILE_STATUS_SNAPSHOT_OLDER,
    ReconcileStatus.NOT_FOUND: sync_pb.RECONCILE_STATUS_NOT_FOUND,
    ReconcileStatus.SKIPPED: sync_pb.RECONCILE_STATUS_SKIPPED,
    ReconcileStatus.FAILED: sync_pb.RECONCILE_STATUS_FAILED,
}


def ms_of(ts: Timestamp, default: int) -> int:
    """Milliseconds of a request timestamp; `default` when unset, -1 when it is not a valid
    Timestamp (protobuf refuses to convert one past year 9999)."""
    if not (ts.seconds or ts.nanos):
        return default
    try:
        return ts.ToMilliseconds()
    except (ValueError, OverflowError):
        return -1


def metered_messages(found: Sequence[MeterUsage]) -> list[pb.MeteredLimit]:
    """Each metered limit's period and usage, as GetEntitlements and GetLimits show them."""
    return [
        pb.MeteredLimit(
            limit=u.limit,
            period_start=timestamp(u.counter.period.start_ms),
            resets_at=timestamp(u.counter.period.end_ms),
            has_usage=True,
            used=u.counter.used,
            reserved=u.counter.reserved,
            remaining=u.remaining,
        )
        for u in found
    ]


def history_message(subject: str, rows: Sequence[HistoryRow]) -> sync_pb.GetSubjectHistoryResponse:
    entries = []
    for row in rows:
        recorded = Timestamp()
        recorded.FromDatetime(row.recorded_at)
        entries.append(
            sync_pb.HistoryEntry(
                kind=HISTORY_KINDS[row.kind],  # type: ignore[arg-type]
                recorded_at=recorded,
                event_id=row.event_id or "",
                type=row.type or "",
                outcome=OUTCOMES.get(row.outcome or "", 0),  # type: ignore[arg-type]
                occurred_at=timestamp(row.event_ms),
                from_plan=row.from_plan or "",
                to_plan=row.to_plan or "",
                note=row.note or "",
                source=row.source or "",
            )
        )
    return sync_pb.GetSubjectHistoryResponse(subject=subject, entries=entries)
