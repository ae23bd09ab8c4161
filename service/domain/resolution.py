"""Resolving a subject's effective plan, features, limits and `valid_until` at an instant.

Pure: it takes the stored item states and the catalog and a clock reading, so every rule of
SPEC §3 (canceled until period end, past-due grace, lifetime, grants, tombstones) is tested with
plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from service.domain.catalog import Catalog, LimitValue, Plan
from service.domain.events import ItemStatus, ItemUpdate
from service.domain.past_due import PastDueTrack
from service.domain.usage import BillingPeriod, Period, period_at


class EntitlementStatus(StrEnum):
    DEFAULT = "default"
    ACTIVE = "active"
    CANCELED = "canceled"
    PAST_DUE = "past_due"
    LIFETIME = "lifetime"
    GRANTED = "granted"


class Reason(StrEnum):
    FEATURE_IN_PLAN = "feature_in_plan"
    FEATURE_NOT_IN_PLAN = "feature_not_in_plan"
    GRANTED_BY_OVERRIDE = "granted_by_override"
    IN_PAST_DUE_GRACE = "in_past_due_grace"
    CANCELED_UNTIL_PERIOD_END = "canceled_until_period_end"
    LIFETIME = "lifetime"
    FEATURE_OVERRIDE_ENABLED = "feature_override_enabled"
    FEATURE_OVERRIDE_DISABLED = "feature_override_disabled"


@dataclass(frozen=True, slots=True)
class ItemState:
    """A subscription item as stored: the latest event's view of it."""

    item_id: str
    status: ItemStatus
    plan_slug: str | None
    plan_id: str | None
    period_end_ms: int | None
    past_due_at_ms: int | None
    event_ms: int
    ever_active: bool = False
    # Observations of past-due episodes, whatever their order (see past_due.py); for a
    # past-due item `past_due_at_ms` is the track's anchor.
    past_due: PastDueTrack = field(default_factory=PastDueTrack)
    period_start_ms: int | None = None
    free_trial: bool = False


@dataclass(frozen=True, slots=True)
class Override:
    """A per-customer term on top of the effective plan (SPEC §10.2): `feature` granted
    (`enabled`) or withheld, or `limit` replaced by `value`; until `expires_at_ms` (None: until
    removed). Among overrides of one feature or limit the newest wins."""

    override_id: str
    feature: str | None
    limit: str | None
    created_at_ms: int
    enabled: bool = False
    value: LimitValue | None = None
    expires_at_ms: int | None = None
    reason: str = ""

    def active_at(self, now_ms: int) -> bool:
        return self.expires_at_ms is None or now_ms < self.expires_at_ms


@dataclass(frozen=True, slots=True)
class Grant:
    """A manual override giving `plan` until `expires_at_ms` (None: until revoked)."""

    plan: str
    granted_at_ms: int
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SubjectState:
    subject: str
    items: tuple[ItemState, ...] = ()
    grants: tuple[Grant, ...] = ()
    deleted_at_ms: int | None = None
    version: int = 0
    overrides: tuple[Override, ...] = ()


@dataclass(frozen=True, slots=True)
class Entitlements:
    """What a subject may use at one instant: the effective plan with the overrides in force
    applied (`features`, `limits`), and when that answer next changes by time alone."""

    subject: str
    plan: Plan
    status: EntitlementStatus
    valid_until_ms: int | None
    version: int
    features: frozenset[str]
    limits: Mapping[str, LimitValue]
    overrides: tuple[Override, ...] = ()
    # feature -> granted (True) or withheld (False) by an override
    feature_overrides: Mapping[str, bool] = field(default_factory=dict)
    # The entitling paid item's period (metered limits with reset = "billing_period").
    billing: BillingPeriod | None = None
    # Metered limit -> its period at the instant resolved.
    meter_periods: Mapping[str, Period] = field(default_factory=dict)
    trial: bool = False
    trial_ends_at_ms: int | None = None
    # The earliest metered-limit reset: what GetLimits and GetEntitlements show (a period and
    # its usage) changes then, though features do not (CanUse's `valid_until` leaves it out).
    next_reset_ms: int | None = None

    @property
    def shown_until_ms(self) -> int | None:
        """Until when an answer that shows metered periods holds: `valid_until_ms` or the
        next reset, whichever comes first (what caches must re-resolve by)."""
        return _earliest(self.valid_until_ms, self.next_reset_ms)


def plan_entitlements(
    subject: str, plan: Plan, status: EntitlementStatus, valid_until_ms: int | None, version: int
) -> Entitlements:
    """A plan's own answer, no override applied."""
    return Entitlements(subject, plan, status, valid_until_ms, version, plan.features, plan.limits)


@dataclass(frozen=True, slots=True)
class _Candidate:
    plan: Plan
    status: EntitlementStatus
    until_ms: int | None  # exclusive end; None = no end by time
    item: ItemState | None = None  # the subscription item it comes from, if any


# Among candidates of the same plan, the one reported: the most durable source first.
_STATUS_PREFERENCE: Mapping[EntitlementStatus, int] = {
    EntitlementStatus.LIFETIME: 0,
    EntitlementStatus.ACTIVE: 1,
    EntitlementStatus.GRANTED: 2,
    EntitlementStatus.CANCELED: 3,
    EntitlementStatus.PAST_DUE: 4,
}


def _item_candidate(
    item: ItemState, catalog: Catalog, now_ms: int, deleted_at_ms: int | None
) -> _Candidate | None:
    if deleted_at_ms is not None and item.event_ms <= deleted_at_ms:
        return None  # ended by the subject's deletion
    plan = catalog.match(item.plan_slug, item.plan_id).plan
    if plan.lifetime and (item.ever_active or item.status is ItemStatus.ACTIVE):
        return _Candidate(plan, EntitlementStatus.LIFETIME, None, item)
    if item.status is ItemStatus.ACTIVE:
        return _Candidate(plan, EntitlementStatus.ACTIVE, None, item)
    if item.status is ItemStatus.CANCELED:
        if item.period_end_ms is None:
            return _Candidate(plan, EntitlementStatus.CANCELED, None, item)
        if now_ms < item.period_end_ms:
            return _Candidate(plan, EntitlementStatus.CANCELED, item.period_end_ms, item)
        return None
    if item.status is ItemStatus.PAST_DUE:
        start = item.past_due_at_ms if item.past_due_at_ms is not None else item.event_ms
        end = start + catalog.past_due_grace_seconds * 1000
        if now_ms < end:
            return _Candidate(plan, EntitlementStatus.PAST_DUE, end, item)
        return None
    return None


def _grant_candidate(
    grant: Grant, catalog: Catalog, now_ms: int, deleted_at_ms: int | None
) -> _Candidate | None:
    if deleted_at_ms is not None and grant.granted_at_ms <= deleted_at_ms:
        return None
    plan = catalog.plans.get(grant.plan)
    if plan is None:
        return None
    if grant.expires_at_ms is not None and now_ms >= grant.expires_at_ms:
        return None
    return _Candidate(plan, EntitlementStatus.GRANTED, grant.expires_at_ms)


def _candidates(state: SubjectState, catalog: Catalog, now_ms: int) -> list[_Candidate]:
    found: list[_Candidate] = []
    for item in state.items:
        c = _item_candidate(item, catalog, now_ms, state.deleted_at_ms)
        if c is not None:
            found.append(c)
    for grant in state.grants:
        c = _grant_candidate(grant, catalog, now_ms, state.deleted_at_ms)
        if c is not None:
            found.append(c)
    return found


def _best(candidates: Iterable[_Candidate], catalog: Catalog) -> tuple[Plan, EntitlementStatus]:
    best = _best_candidate(candidates)
    if best is None:
        return catalog.default_plan, EntitlementStatus.DEFAULT
    return best.plan, best.status


def _best_candidate(candidates: Iterable[_Candidate]) -> _Candidate | None:
    best: _Candidate | None = None
    for c in candidates:
        if best is None:
            best = c
            continue
        key = (
            c.plan.rank,
            -_STATUS_PREFERENCE[c.status],
            c.until_ms is None,
            c.until_ms or 0,
        )
        best_key = (
            best.plan.rank,
            -_STATUS_PREFERENCE[best.status],
            best.until_ms is None,
            best.until_ms or 0,
        )
        if key > best_key:
            best = c
    return best


def _in_force(state: SubjectState, now_ms: int) -> tuple[Override, ...]:
    """The overrides in force at `now_ms`, oldest first (so the newest of one target wins)."""
    deleted = state.deleted_at_ms
    return tuple(
        sorted(
            (
                o
                for o in state.overrides
                if o.active_at(now_ms) and (deleted is None or o.created_at_ms > deleted)
            ),
            key=lambda o: (o.created_at_ms, o.override_id),
        )
    )


def _earliest(*instants: int | None) -> int | None:
    present = [i for i in instants if i is not None]
    return min(present) if present else None


def resolve(state: SubjectState, catalog: Catalog, now_ms: int) -> Entitlements:
    """The subject's entitlements at `now_ms`, with the instant they next change by time: a
    plan's end or an override's expiry (`valid_until_ms`), and a metered limit's reset
    (`next_reset_ms`)."""
    candidates = _candidates(state, catalog, now_ms)
    best = _best_candidate(candidates)
    plan, status = (
        (best.plan, best.status) if best else (catalog.default_plan, EntitlementStatus.DEFAULT)
    )
    valid_until: int | None = None
    # Time only removes candidates; walk their ends in order until the answer changes.
    for end in sorted({c.until_ms for c in candidates if c.until_ms is not None}):
        later_plan, later_status = _best(_candidates(state, catalog, end), catalog)
        if later_plan.name != plan.name or later_status is not status:
            valid_until = end
            break
    overrides = _in_force(state, now_ms)
    features = set(plan.features)
    feature_overrides: dict[str, bool] = {}
    limits = dict(plan.limits)
    for o in overrides:
        if o.feature is not None:
            feature_overrides[o.feature] = o.enabled
            (features.add if o.enabled else features.discard)(o.feature)
        elif o.limit is not None and o.value is not None and o.limit in limits:
            limits[o.limit] = o.value
    item = best.item if best else None
    billing = None
    if item is not None and item.period_start_ms is not None and item.period_end_ms is not None:
        billing = BillingPeriod(item.period_start_ms, item.period_end_ms)
    periods = {name: period_at(reset, now_ms, billing) for name, reset in catalog.meters.items()}
    valid_until = _earliest(valid_until, *(o.expires_at_ms for o in overrides))
    next_reset = _earliest(*(p.end_ms for p in periods.values()))
    trial = item is not None and item.free_trial
    return Entitlements(
        state.subject,
        plan,
        status,
        valid_until,
        state.version,
        frozenset(features),
        limits,
        overrides,
        feature_overrides,
        billing,
        periods,
        trial,
        item.period_end_ms if trial and item is not None else None,
        next_reset,
    )


_REASON_BY_STATUS: Mapping[EntitlementStatus, Reason] = {
    EntitlementStatus.GRANTED: Reason.GRANTED_BY_OVERRIDE,
    EntitlementStatus.PAST_DUE: Reason.IN_PAST_DUE_GRACE,
    EntitlementStatus.CANCELED: Reason.CANCELED_UNTIL_PERIOD_END,
    EntitlementStatus.LIFETIME: Reason.LIFETIME,
}


def feature_decision(entitlements: Entitlements, feature: str) -> tuple[bool, Reason]:
    """Whether the feature is allowed, and why."""
    overridden = entitlements.feature_overrides.get(feature)
    if overridden is not None:
        if overridden:
            return True, Reason.FEATURE_OVERRIDE_ENABLED
        return False, Reason.FEATURE_OVERRIDE_DISABLED
    if feature not in entitlements.features:
        return False, Reason.FEATURE_NOT_IN_PLAN
    return True, _REASON_BY_STATUS.get(entitlements.status, Reason.FEATURE_IN_PLAN)


def _observed(old: ItemState | None, update: ItemUpdate) -> PastDueTrack:
    track = old.past_due if old is not None else PastDueTrack()
    return track.observe(
        update.event_ms,
        update.lifecycle_rank,
        update.status is ItemStatus.PAST_DUE,
        update.past_due_at_ms,
    )


def item_after_update(old: ItemState | None, update: ItemUpdate) -> ItemState:
    """The stored item after `update` won the ordering guard (the store writes exactly this)."""
    track = _observed(old, update)
    past_due_at = update.past_due_at_ms
    if update.status is ItemStatus.PAST_DUE:
        # Grace runs from the first sighting of this past-due episode: re-listing an item
        # that is already past due never restarts it.
        past_due_at = track.anchor_ms if track.anchor_ms is not None else update.event_ms
    return ItemState(
        item_id=update.item_id,
        status=update.status,
        plan_slug=update.plan_slug,
        plan_id=update.plan_id,
        period_end_ms=update.period_end_ms,
        past_due_at_ms=past_due_at,
        event_ms=update.event_ms,
        ever_active=(old is not None and old.ever_active) or update.status is ItemStatus.ACTIVE,
        past_due=track,
        period_start_ms=update.period_start_ms,
        free_trial=update.free_trial,
    )


def item_after_stale(old: ItemState, update: ItemUpdate) -> ItemState:
    """The stored item after an older `update` lost the ordering guard: it still counts as an
    observation (ever active; past-due episodes), so the result is the same in any order."""
    track = _observed(old, update)
    past_due_at = old.past_due_at_ms
    if old.status is ItemStatus.PAST_DUE and track.anchor_ms is not None:
        past_due_at = track.anchor_ms
    return replace(
        old,
        ever_active=old.ever_active or update.status is ItemStatus.ACTIVE,
        past_due=track,
        past_due_at_ms=past_due_at,
    )


def with_items(state: SubjectState, changed: Sequence[ItemState]) -> SubjectState:
    """The state with `changed` items replacing (or joining) the stored ones."""
    if not changed:
        return state
    items = {item.item_id: item for item in state.items}
    for item in changed:
        items[item.item_id] = item
    return replace(state, items=tuple(items.values()))
