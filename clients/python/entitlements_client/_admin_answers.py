"""What `AdminClient` returns: dataclasses made from BillingSyncService's messages (pure), as
the read clients return theirs. Enum values are their names in lower case, without the
enum's prefix ("plan_change", "repaired"; an outcome keeps its contract name, "APPLIED")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements_client._answers import when


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A grant given (`grant`) or taken back (`revoke`): the subject's plan before and after."""

    grant_id: str
    subject: str
    plan: str
    previous_plan: str
    version: int

    @classmethod
    def from_message(cls, m: sync_pb.GrantPlanResponse | sync_pb.RevokeGrantResponse) -> PlanChange:
        return cls(m.grant_id, m.subject, m.plan, m.previous_plan, m.version)


@dataclass(frozen=True, slots=True)
class OverrideChange:
    """An override set or removed, and the subject's entitlements version after it."""

    override_id: str
    version: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a subject's history: a delivery, a plan change, a grant or an override."""

    kind: str
    recorded_at: datetime | None
    event_id: str
    type: str
    outcome: str
    occurred_at: datetime | None
    from_plan: str
    to_plan: str
    note: str
    source: str


@dataclass(frozen=True, slots=True)
class History:
    subject: str
    entries: tuple[HistoryEntry, ...]

    @classmethod
    def from_message(cls, m: sync_pb.GetSubjectHistoryResponse) -> History:
        entries = tuple(
            HistoryEntry(
                kind=sync_pb.HistoryKind.Name(e.kind).removeprefix("HISTORY_KIND_").lower(),
                recorded_at=when(e, "recorded_at"),
                event_id=e.event_id,
                type=e.type,
                outcome=sync_pb.Outcome.Name(e.outcome),
                occurred_at=when(e, "occurred_at"),
                from_plan=e.from_plan,
                to_plan=e.to_plan,
                note=e.note,
                source=e.source,
            )
            for e in m.entries
        )
        return cls(m.subject, entries)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """One subject reconciled against Clerk: `status` "in_sync", "repaired", … "failed"."""

    subject: str
    status: str
    plan: str
    previous_plan: str
    event_id: str
    differences: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class ReconcileProgress:
    """`done` of `total` subjects finished; `results`: those finished since the last one."""

    done: int
    total: int
    results: tuple[Reconciliation, ...]

    @classmethod
    def from_message(cls, m: sync_pb.ReconcileResponse) -> ReconcileProgress:
        results = tuple(
            Reconciliation(
                r.subject,
                sync_pb.ReconcileStatus.Name(r.status).removeprefix("RECONCILE_STATUS_").lower(),
                r.plan,
                r.previous_plan,
                r.event_id,
                tuple(r.differences),
                r.detail,
            )
            for r in m.results
        )
        return cls(m.done, m.total, results)


@dataclass(frozen=True, slots=True)
class ReplayedDelivery:
    """A stored delivery applied again; `changed` when it changed stored state."""

    event_id: str
    type: str
    subject: str
    previous_outcome: str
    outcome: str
    changed: bool
    plan: str
    previous_plan: str
    note: str


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    done: int
    total: int
    results: tuple[ReplayedDelivery, ...]

    @classmethod
    def from_message(cls, m: sync_pb.ReplayDeliveriesResponse) -> ReplayProgress:
        results = tuple(
            ReplayedDelivery(
                r.event_id,
                r.type,
                r.subject,
                sync_pb.Outcome.Name(r.previous_outcome),
                sync_pb.Outcome.Name(r.outcome),
                r.changed,
                r.plan,
                r.previous_plan,
                r.note,
            )
            for r in m.results
        )
        return cls(m.done, m.total, results)


@dataclass(frozen=True, slots=True)
class StateDifference:
    subject: str
    description: str


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    """Verification so far; the last one has `finished` and `subjects_checked`."""

    done: int
    total: int
    finished: bool
    subjects_checked: int
    differences: tuple[StateDifference, ...]

    @classmethod
    def from_message(cls, m: sync_pb.VerifyStateResponse) -> VerifyProgress:
        differences = tuple(StateDifference(d.subject, d.description) for d in m.differences)
        return cls(m.done, m.total, m.finished, m.subjects_checked, differences)


@dataclass(frozen=True, slots=True)
class ClerkPlan:
    id: str
    slug: str
    name: str


@dataclass(frozen=True, slots=True)
class CatalogCheck:
    """The catalog against Clerk's plans: Clerk plans it does not map (they resolve to the
    default plan) and catalog slugs Clerk does not have."""

    clerk_plans: int
    unmapped_clerk_plans: tuple[ClerkPlan, ...]
    unknown_catalog_slugs: tuple[str, ...]

    @classmethod
    def from_message(cls, m: sync_pb.CheckCatalogResponse) -> CatalogCheck:
        unmapped = tuple(ClerkPlan(p.id, p.slug, p.name) for p in m.unmapped_clerk_plans)
        return cls(m.clerk_plans, unmapped, tuple(m.unknown_catalog_slugs))
