"""Operator jobs over the store: reconcile with Clerk, replay stored deliveries, verify state.

Each job is an async generator of progress batches, so the gRPC servicer can stream them to the
CLI's progress bar and the scheduler can run the same code without one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from service.adapters.clerk_api import ClerkApi, ClerkApiError, ClerkApiSettings
from service.adapters.postgres.store import (
    ApplyResult,
    DeliverySelector,
    Outcome,
    ReplayResult,
    Store,
    StoredDelivery,
    StoreSnapshot,
)
from service.domain.catalog import Catalog
from service.domain.events import NormalizedEvent, normalize_event
from service.domain.rebuild import ITEM_STATE_COLUMNS, Rebuild
from service.domain.reconcile import RECONCILE_EVENT_TYPE, clerk_kind, plan_reconciliation
from service.domain.resolution import Grant, SubjectState, resolve

log = logging.getLogger(__name__)

PAGE = 100
VERIFY_PAGE = 2000
RECONCILE_SOURCE = "reconcile"
OnChange = Callable[[ApplyResult], None]


@dataclass(frozen=True)
class Progress:
    """`done` of `total` finished; `batch` holds the results since the previous report."""

    done: int
    total: int
    batch: list[Any] = field(default_factory=list)


# ---- reconciliation -----------------------------------------------------------------------


class ReconcileStatus(Enum):
    IN_SYNC = "in_sync"
    REPAIRED = "repaired"
    SNAPSHOT_OLDER = "snapshot_older"
    NOT_FOUND = "not_found"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class Reconciliation:
    subject: str
    status: ReconcileStatus
    plan: str = ""
    previous_plan: str = ""
    event_id: str = ""
    differences: tuple[str, ...] = ()
    detail: str = ""


class Reconciler:
    """Compares subjects with Clerk's Backend API and repairs differences."""

    def __init__(self, store: Store, settings: ClerkApiSettings, on_change: OnChange) -> None:
        self._store = store
        self._settings = settings
        self._on_change = on_change

    async def run(
        self, subjects: Sequence[str] | None
    ) -> AsyncIterator[Progress]:  # None: every known subject
        total = len(subjects) if subjects is not None else await self._store.count_known_subjects()
        done = 0
        async with ClerkApi(self._settings) as api:
            async for page in self._pages(subjects):
                results = await asyncio.gather(*(self.reconcile(api, s) for s in page))
                done += len(results)
                yield Progress(done, max(total, done), list(results))
        if done == 0:
            yield Progress(0, 0)  # a caller always hears how it ended

    async def _pages(self, subjects: Sequence[str] | None) -> AsyncIterator[list[str]]:
        if subjects is not None:
            for start in range(0, len(subjects), PAGE):
                yield list(subjects[start : start + PAGE])
            return
        after = ""
        while page := await self._store.known_subjects(after, PAGE):
            yield page
            after = page[-1]

    async def reconcile(self, api: ClerkApi, subject: str) -> Reconciliation:
        if clerk_kind(subject) is None:
            return Reconciliation(
                subject, ReconcileStatus.SKIPPED, detail="not a Clerk user or organization id"
            )
        stored = (await self._store.load_states([subject]))[subject]
        fetched_at_ms = self._store.now_ms()
        try:
            subscription = await api.subscription(subject)
        except ClerkApiError as exc:
            log.warning("reconcile %s: %s", subject, exc)
            return Reconciliation(subject, ReconcileStatus.FAILED, detail=str(exc))
        current = resolve(stored, self._store.catalog, fetched_at_ms).plan.name
        if subscription is None:
            return Reconciliation(
                subject,
                ReconcileStatus.NOT_FOUND,
                current,
                current,
                detail="Clerk has no subscription for this subject",
            )
        plan = plan_reconciliation(subject, subscription, stored.items, fetched_at_ms)
        if plan.error is not None:
            return Reconciliation(
                subject, ReconcileStatus.FAILED, current, current, detail=plan.error
            )
        if plan.payload is None:
            return Reconciliation(subject, ReconcileStatus.IN_SYNC, current, current)
        event_id = f"rcn_{uuid.uuid4().hex}"
        event = normalize_event(plan.payload, RECONCILE_EVENT_TYPE, plan.snapshot_ms)
        result = await self._store.apply(
            event_id,
            RECONCILE_EVENT_TYPE,
            plan.payload,
            datetime.fromtimestamp(fetched_at_ms / 1000, UTC),
            event,
            source=RECONCILE_SOURCE,
            signed_at_ms=plan.snapshot_ms,
        )
        self._on_change(result)
        if result.outcome == Outcome.APPLIED and result.version:
            log.info(
                "reconcile %s repaired (%s): %s -> %s",
                subject,
                event_id,
                result.previous_plan,
                result.plan,
            )
            status = ReconcileStatus.REPAIRED
            detail = ""
        else:
            status = ReconcileStatus.SNAPSHOT_OLDER
            detail = "Clerk's snapshot is older than the stored state; the newer webhook stands"
        return Reconciliation(
            subject,
            status,
            result.plan or current,
            result.previous_plan or current,
            event_id,
            plan.differences,
            detail,
        )


async def run_reconcile_schedule(
    store: Store, reconciler: Reconciler, interval_seconds: float, owner: str
) -> None:
    """Reconcile every known subject once per interval, on one replica at a time."""
    while True:
        try:
            if await store.claim_reconcile_run(interval_seconds, owner):
                counts: dict[str, int] = {}
                async for progress in reconciler.run(None):
                    for r in progress.batch:
                        counts[r.status.value] = counts.get(r.status.value, 0) + 1
                log.info("scheduled reconciliation finished: %s", counts or "no subjects")
        except Exception:  # the schedule must outlive any one failed pass
            log.exception("scheduled reconciliation failed; next attempt in %.0f s", 30.0)
        await asyncio.sleep(min(interval_seconds, 30.0))


# ---- replay -------------------------------------------------------------------------------


def normalize_stored(delivery: StoredDelivery) -> NormalizedEvent:
    received_ms = int(delivery.received_at.timestamp() * 1000)
    return normalize_event(delivery.payload, delivery.type, delivery.fallback_ms, received_ms)


async def replay(
    store: Store,
    selector: DeliverySelector,
    on_change: OnChange,
    normalize: Callable[[StoredDelivery], NormalizedEvent] = normalize_stored,
) -> AsyncIterator[Progress]:
    """Re-apply the selected deliveries in event-id order with the current parser."""
    total = await store.count_deliveries(selector)
    done = 0
    after = ""
    while page := await store.deliveries_page(selector, after, PAGE):
        after = page[-1].event_id
        batch: list[ReplayResult] = []
        for delivery in page:
            replayed = await store.replay(delivery.event_id, normalize)
            if replayed is None:
                continue
            on_change(replayed.result)
            batch.append(replayed)
        done += len(page)
        yield Progress(done, max(total, done), batch)
    if done == 0:
        yield Progress(0, 0)


# ---- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    subjects_checked: int
    differences: list[tuple[str, str]]


async def verify(store: Store, catalog: Catalog) -> AsyncIterator[Progress | VerifyReport]:
    """Rebuild all state from the stored deliveries and grants with the current rules (in
    memory, service/domain/rebuild.py) and compare it with the live state; yields progress,
    then the report.

    Both the log and the live state are read from one repeatable-read snapshot, so writes
    during the run cannot show up as differences.
    """
    rebuild = Rebuild()
    async with store.snapshot() as snapshot:
        for row in await snapshot.grants():
            _grant_id, subject, plan, _reason, granted_at, expires_at, revoked_at = row[:7]
            rebuild.add_grant(
                subject, Grant(plan, granted_at, expires_at) if revoked_at is None else None
            )
        everything = DeliverySelector()
        total = await snapshot.count_deliveries(everything)
        done = 0
        after = ""
        while page := await snapshot.deliveries_page(everything, after, VERIFY_PAGE):
            after = page[-1].event_id
            for delivery in page:
                rebuild.apply(normalize_stored(delivery))
            done += len(page)
            yield Progress(done, max(total, done))
        yield await _compare(snapshot, rebuild, catalog, store.now_ms())


async def _compare(
    live: StoreSnapshot, rebuilt: Rebuild, catalog: Catalog, now: int
) -> VerifyReport:
    live_items, live_subjects = await live.verification_rows()
    new_items, new_subjects = rebuilt.item_rows(), rebuilt.subject_rows()
    differences: list[tuple[str, str]] = []
    subject_at = ITEM_STATE_COLUMNS.index("subject")
    for item_id in sorted(live_items.keys() | new_items.keys()):
        old, new = live_items.get(item_id), new_items.get(item_id)
        if old == new:
            continue
        subject = str((old or new or ("",) * 2)[subject_at])
        differences.append((subject, f"item {item_id}: {_item_diff(old, new)}"))
    subjects = sorted(live_subjects.keys() | new_subjects.keys())
    for subject in subjects:
        if live_subjects.get(subject) != new_subjects.get(subject):
            differences.append(
                (
                    subject,
                    f"deleted_at_ms: live {live_subjects.get(subject)}, "
                    f"rebuilt {new_subjects.get(subject)}",
                )
            )
    live_states = await live.load_states(subjects)
    new_states = rebuilt.states()
    for subject in subjects:
        old_plan = resolve(live_states[subject], catalog, now).plan.name
        rebuilt_state = new_states.get(subject, SubjectState(subject))
        new_plan = resolve(rebuilt_state, catalog, now).plan.name
        if old_plan != new_plan:
            differences.append((subject, f"plan: live {old_plan}, rebuilt {new_plan}"))
    return VerifyReport(len(subjects), differences)


def _item_diff(old: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> str:
    if old is None:
        return "missing from the live state"
    if new is None:
        return "in the live state but no stored delivery produces it"
    parts = [
        f"{name} live {a!r}, rebuilt {b!r}"
        for name, a, b in zip(ITEM_STATE_COLUMNS, old, new, strict=True)
        if a != b
    ]
    return "; ".join(parts)
