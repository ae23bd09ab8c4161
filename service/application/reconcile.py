"""Use cases: reconcile subjects with Clerk's Backend API (on demand and on a schedule), and
check the catalog against Clerk's plans."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum

from service.application.deliveries import ApplyDelivery
from service.application.ports import (
    ClerkApiError,
    ClerkConnector,
    ClerkSubscriptions,
    Clock,
    Operations,
)
from service.application.progress import Progress
from service.domain.catalog import Catalog, CatalogCheck, check_catalog
from service.domain.deliveries import RECONCILE, Delivery
from service.domain.errors import Unavailable
from service.domain.reconcile import RECONCILE_EVENT_TYPE, clerk_kind, plan_reconciliation
from service.domain.resolution import resolve

log = logging.getLogger(__name__)

PAGE = 100


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
    """Compares subjects with Clerk's Backend API and repairs differences with a synthetic
    delivery (source "reconcile"), applied like any other."""

    def __init__(
        self,
        operations: Operations,
        connect: ClerkConnector,
        apply: ApplyDelivery,
        catalog: Catalog,
        clock: Clock,
    ) -> None:
        self._operations = operations
        self._connect = connect
        self._apply = apply
        self._catalog = catalog
        self._clock = clock

    async def run(
        self, subjects: Sequence[str] | None
    ) -> AsyncIterator[Progress[Reconciliation]]:  # None: every known subject
        total = (
            len(subjects) if subjects is not None else await self._operations.count_known_subjects()
        )
        done = 0
        async with self._connect() as api:
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
        while page := await self._operations.known_subjects(after, PAGE):
            yield page
            after = page[-1]

    async def reconcile(self, api: ClerkSubscriptions, subject: str) -> Reconciliation:
        if clerk_kind(subject) is None:
            return Reconciliation(
                subject, ReconcileStatus.SKIPPED, detail="not a Clerk user or organization id"
            )
        stored = (await self._operations.load_states([subject]))[subject]
        fetched_at_ms = self._clock.now_ms()
        try:
            subscription = await api.subscription(subject)
        except ClerkApiError as exc:
            log.warning("reconcile %s: %s", subject, exc)
            return Reconciliation(subject, ReconcileStatus.FAILED, detail=str(exc))
        current = resolve(stored, self._catalog, fetched_at_ms).plan.name
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
        result = await self._apply(
            Delivery(
                event_id,
                RECONCILE_EVENT_TYPE,
                plan.payload,
                fetched_at_ms,
                plan.snapshot_ms,
                RECONCILE,
            )
        )
        if result.committed:
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
    operations: Operations, reconciler: Reconciler, interval_seconds: float, owner: str
) -> None:
    """Reconcile every known subject once per interval, on one replica at a time."""
    while True:
        try:
            if await operations.claim_reconcile_run(interval_seconds, owner):
                counts: dict[str, int] = {}
                async for progress in reconciler.run(None):
                    for r in progress.batch:
                        counts[r.status.value] = counts.get(r.status.value, 0) + 1
                log.info("scheduled reconciliation finished: %s", counts or "no subjects")
        except Exception:  # the schedule must outlive any one failed pass
            log.exception("scheduled reconciliation failed; next attempt in %.0f s", 30.0)
        await asyncio.sleep(min(interval_seconds, 30.0))


class CheckCatalog:
    """Clerk plans the catalog does not map, and catalog slugs Clerk does not have."""

    def __init__(self, connect: ClerkConnector, catalog: Catalog) -> None:
        self._connect = connect
        self._catalog = catalog

    async def __call__(self) -> CatalogCheck:
        try:
            async with self._connect() as api:
                plans = await api.plans()
        except ClerkApiError as exc:
            raise Unavailable(f"Clerk API: {exc}") from exc
        return check_catalog(self._catalog, plans)
