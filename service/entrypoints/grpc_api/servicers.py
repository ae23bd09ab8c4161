"""gRPC servicers: validate the request, ask the store and the domain, build the response."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from entitlements.v1 import (
    billing_sync_service_pb2 as sync_pb,
)
from entitlements.v1 import (
    billing_sync_service_pb2_grpc as sync_grpc,
)
from entitlements.v1 import (
    entitlement_service_pb2 as pb,
)
from entitlements.v1 import (
    entitlement_service_pb2_grpc as pb_grpc,
)
from service.adapters.cache import CacheEntry
from service.adapters.clerk_api import ClerkApi, ClerkApiError, ClerkApiSettings
from service.adapters.postgres.store import ApplyResult, DeliverySelector, Outcome, Store
from service.application.change_feed import ChangeHub
from service.application.reads import EntitlementReader
from service.domain.bounds import echo, storable_text, wire_ms, within_window
from service.domain.catalog import Catalog, check_catalog
from service.domain.errors import (
    FailedPrecondition,
    NotFound,
    OutOfRange,
    Unavailable,
)
from service.domain.events import normalize_event
from service.domain.resolution import (
    feature_decision,
    limit_decision,
)
from service.domain.subjects import InvalidArgument, require_subject
from service.entrypoints.grpc_api.mapping import (
    HISTORY_KINDS,
    OUTCOMES,
    REASONS,
    RECONCILE_STATUSES,
    entitlements_message,
    limits,
    ms_of,
    timestamp,
)
from service.entrypoints.grpc_api.watch import WatchStreams
from service.operations import (
    Progress,
    Reconciler,
    replay,
    verify,
)

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_EVENT_ID_BYTES = 255
DEFAULT_HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000

Context = aio.ServicerContext[Any, Any]


class EntitlementServicer(pb_grpc.EntitlementServiceServicer):
    """The read side: answers from the reader (cache, else PostgreSQL), resolved at call time."""

    def __init__(
        self,
        reader: EntitlementReader,
        catalog: Catalog,
        store: Store,
        hub: ChangeHub,
    ) -> None:
        self._reader = reader
        self._catalog = catalog
        self._features = catalog.features
        self._store = store
        self._watch = WatchStreams(hub, store, reader, catalog, entitlements_message)

    def _require_feature(self, feature: str) -> None:
        if feature not in self._features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")

    @staticmethod
    def _can_use(entry: CacheEntry, feature: str) -> pb.CanUseResponse:
        # Memoised per cache entry: an entry is immutable, so is its answer.
        key = ("can_use", feature)
        response: pb.CanUseResponse | None = entry.memo.get(key)
        if response is None:
            ent = entry.entitlements
            allowed, reason = feature_decision(ent, feature)
            response = pb.CanUseResponse(
                allowed=allowed,
                plan=ent.plan.name,
                reason=REASONS[reason],  # type: ignore[arg-type]
                valid_until=timestamp(ent.valid_until_ms),
            )
            entry.memo[key] = response
        return response

    async def CanUse(self, request: pb.CanUseRequest, context: Context) -> pb.CanUseResponse:
        feature = request.feature
        if feature not in self._features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")
        entry = self._reader.cached(request.subject, self._store.now_ms())
        if entry is None:  # not `get`: it would look in the cache a second time
            entry = (await self._reader.load([request.subject]))[request.subject]
        return self._can_use(entry, feature)

    async def BatchCanUse(
        self, request: pb.BatchCanUseRequest, context: Context
    ) -> pb.BatchCanUseResponse:
        if len(request.checks) > MAX_BATCH:
            raise InvalidArgument(
                f"checks: at most {MAX_BATCH} per call, got {len(request.checks)}"
            )
        for i, check in enumerate(request.checks):
            try:
                require_subject(check.subject)
                self._require_feature(check.feature)
            except InvalidArgument as exc:
                raise InvalidArgument(f"checks[{i}]: {exc}") from None
        entries = await self._reader.get_many([c.subject for c in request.checks])
        return pb.BatchCanUseResponse(
            results=[self._can_use(entries[c.subject], c.feature) for c in request.checks]
        )

    async def GetLimits(
        self, request: pb.GetLimitsRequest, context: Context
    ) -> pb.GetLimitsResponse:
        entry = await self._reader.get(request.subject)
        response: pb.GetLimitsResponse | None = entry.memo.get("limits")
        if response is None:
            ent = entry.entitlements
            response = pb.GetLimitsResponse(
                plan=ent.plan.name,
                limits=limits(ent.limits),
                valid_until=timestamp(ent.valid_until_ms),
            )
            entry.memo["limits"] = response
        return response

    async def CheckLimit(
        self, request: pb.CheckLimitRequest, context: Context
    ) -> pb.CheckLimitResponse:
        if request.limit not in self._catalog.limit_names:
            raise InvalidArgument(f"unknown limit {echo(request.limit)}")
        if request.current_usage < 0 or request.requested < 0:
            raise InvalidArgument("current_usage and requested must not be negative")
        ent = (await self._reader.get(request.subject)).entitlements
        decision = limit_decision(ent, request.limit, request.current_usage, request.requested)
        return pb.CheckLimitResponse(
            allowed=decision.allowed,
            limit=decision.limit.value,
            remaining=decision.remaining,
            unlimited=decision.limit.unlimited,
            plan=ent.plan.name,
            valid_until=timestamp(ent.valid_until_ms),
        )

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: Context
    ) -> pb.GetEntitlementsResponse:
        entry = await self._reader.get(request.subject)
        response: pb.GetEntitlementsResponse | None = entry.memo.get("entitlements")
        if response is None:
            response = entitlements_message(entry.entitlements)
            entry.memo["entitlements"] = response
        return response

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: Context
    ) -> pb.ListPlansResponse:
        catalog = self._catalog
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
            features=sorted(catalog.features),
            limits=list(catalog.limit_names),
        )

    async def WatchEntitlements(
        self, request: pb.WatchEntitlementsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Replay the change log from `since_version`, then follow it live (see watch.py).

        `version` in every message is a stream position: resuming from it misses nothing
        (a change may come twice; applying it again is harmless). A message with an empty
        `subject` is a heartbeat: "caught up", sent at least every second.
        """
        subjects = [require_subject(s) for s in request.subjects] or None
        since: int | None = None
        if request.HasField("since_version"):
            if request.since_version < 0:
                raise InvalidArgument("since_version must not be negative")
            pruned, ceiling = await self._store.change_log_bounds()
            since = request.since_version
            if since < pruned or since > ceiling:
                raise OutOfRange(
                    f"since_version {since} is outside the change log "
                    f"({pruned}..{ceiling}); re-sync and watch without since_version"
                )
        async for message in self._watch.stream(subjects, since, _peer_address(context)):
            yield message


def _peer_address(context: Context) -> str:
    """The caller's address without its port ("ipv4:10.0.0.7"), for per-client limits."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


MAX_REASON_CHARS = 500


class BillingSyncServicer(sync_grpc.BillingSyncServiceServicer):
    """The write side, behind the bearer-secret interceptor."""

    def __init__(
        self,
        store: Store,
        hub: ChangeHub | None = None,
        clerk: ClerkApiSettings | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._clerk = clerk

    async def ApplyBillingEvent(
        self, request: sync_pb.ApplyBillingEventRequest, context: Context
    ) -> sync_pb.ApplyBillingEventResponse:
        event_id = request.event_id
        if (
            not event_id
            or len(event_id.encode()) > MAX_EVENT_ID_BYTES
            or not event_id.isprintable()
        ):
            raise InvalidArgument(
                f"event_id must be 1 to {MAX_EVENT_ID_BYTES} bytes of printable characters"
            )
        now_ms = int(time.time() * 1000)
        # Times from the caller are bounded like any other: out of the window, ours are used.
        received_ms = within_window(ms_of(request.received_at, now_ms)) or now_ms
        fallback_ms = within_window(ms_of(request.signed_at, received_ms)) or received_ms
        event = normalize_event(request.payload, request.type, fallback_ms, received_ms)
        result = await self._store.apply(
            event_id,
            request.type or event.type,
            request.payload,
            datetime.fromtimestamp(received_ms / 1000, UTC),
            event,
            signed_at_ms=fallback_ms,
        )
        self.changed(result)
        for note in result.notes:
            if note.startswith("unknown plan slug"):
                log.warning("event %s for %s: %s", event_id, result.subject, note)
        if result.outcome == Outcome.UNPARSEABLE:
            log.warning(
                "event %s (%s) stored as UNPARSEABLE: %s", event_id, event.type, event.error
            )
        if result.plan is not None and result.plan != result.previous_plan:
            log.info(
                "plan of %s: %s -> %s (event %s, %s)",
                result.subject,
                result.previous_plan,
                result.plan,
                event_id,
                event.type,
            )
        return sync_pb.ApplyBillingEventResponse(
            outcome=OUTCOMES[result.outcome],  # type: ignore[arg-type]
            subject=result.subject or "",
            plan=result.plan or "",
            previous_plan=result.previous_plan or "",
            version=result.version,
            notes=[storable_text(note, 1000) for note in result.notes],
        )

    async def GetSubjectHistory(
        self, request: sync_pb.GetSubjectHistoryRequest, context: Context
    ) -> sync_pb.GetSubjectHistoryResponse:
        subject = require_subject(request.subject)
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        page = min(request.page_size or DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)
        rows = await self._store.history(subject, page)
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

    async def GrantPlan(
        self, request: sync_pb.GrantPlanRequest, context: Context
    ) -> sync_pb.GrantPlanResponse:
        subject = require_subject(request.subject)
        if request.plan not in self._store.catalog.plans:
            raise InvalidArgument(f"unknown plan {echo(request.plan)}")
        reason = request.reason.strip()
        if not reason or len(reason) > MAX_REASON_CHARS:
            raise InvalidArgument(f"reason is required (at most {MAX_REASON_CHARS} characters)")
        expires_at_ms = ms_of(request.expires_at, -1) if request.HasField("expires_at") else None
        if expires_at_ms is not None and wire_ms(expires_at_ms) is None:
            raise InvalidArgument("expires_at must be a valid timestamp (before year 10000)")
        if expires_at_ms is not None and expires_at_ms <= self._store.now_ms():
            raise InvalidArgument("expires_at must be in the future")
        grant_id, result = await self._store.grant(subject, request.plan, expires_at_ms, reason)
        self.changed(result)
        log.info("grant %s: %s for %s", grant_id, request.plan, subject)
        return sync_pb.GrantPlanResponse(
            grant_id=grant_id,
            subject=subject,
            plan=result.plan or "",
            previous_plan=result.previous_plan or "",
            version=result.version,
        )

    async def RevokeGrant(
        self, request: sync_pb.RevokeGrantRequest, context: Context
    ) -> sync_pb.RevokeGrantResponse:
        if not request.grant_id:
            raise InvalidArgument("grant_id is required")
        result = await self._store.revoke_grant(request.grant_id, request.reason.strip())
        if result is None:
            raise NotFound(f"no active grant {echo(request.grant_id)}")
        self.changed(result)
        return sync_pb.RevokeGrantResponse(
            grant_id=request.grant_id,
            subject=result.subject or "",
            plan=result.plan or "",
            previous_plan=result.previous_plan or "",
            version=result.version,
        )

    def _clerk_settings(self, what: str) -> ClerkApiSettings:
        if self._clerk is None:
            raise FailedPrecondition(f"{what} needs CLERK_SECRET_KEY on the server")
        return self._clerk

    async def Reconcile(
        self, request: sync_pb.ReconcileRequest, context: Context
    ) -> AsyncIterator[sync_pb.ReconcileResponse]:
        if request.all == bool(request.subjects):
            raise InvalidArgument("give either subjects or all (not both)")
        subjects = (
            list(dict.fromkeys(require_subject(s) for s in request.subjects))
            if request.subjects
            else None
        )
        if subjects is not None and len(subjects) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} subjects per call (or all)")
        reconciler = Reconciler(self._store, self._clerk_settings("reconciliation"), self.changed)
        async for progress in reconciler.run(subjects):
            yield sync_pb.ReconcileResponse(
                done=progress.done,
                total=progress.total,
                results=[
                    sync_pb.SubjectReconciliation(
                        subject=r.subject,
                        status=RECONCILE_STATUSES[r.status],  # type: ignore[arg-type]
                        plan=r.plan,
                        previous_plan=r.previous_plan,
                        event_id=r.event_id,
                        differences=list(r.differences),
                        detail=r.detail,
                    )
                    for r in progress.batch
                ],
            )

    async def ReplayDeliveries(
        self, request: sync_pb.ReplayDeliveriesRequest, context: Context
    ) -> AsyncIterator[sync_pb.ReplayDeliveriesResponse]:
        chosen = sum((request.all, bool(request.subject), request.unparseable))
        if chosen != 1:
            raise InvalidArgument("choose exactly one of all, subject or unparseable")
        selector = DeliverySelector(
            subject=require_subject(request.subject) if request.subject else None,
            unparseable=request.unparseable,
        )
        async for progress in replay(self._store, selector, self.changed):
            results = []
            for r in progress.batch:
                changed = r.changed
                if changed or r.delivery.outcome != r.result.outcome:
                    log.info(
                        "replayed %s (%s): %s -> %s%s",
                        r.delivery.event_id,
                        r.delivery.type,
                        r.delivery.outcome,
                        r.result.outcome,
                        f", plan of {r.result.subject}: {r.result.previous_plan} -> {r.result.plan}"
                        if changed
                        else "",
                    )
                results.append(
                    sync_pb.ReplayedDelivery(
                        event_id=r.delivery.event_id,
                        type=r.delivery.type,
                        subject=r.result.subject or "",
                        previous_outcome=OUTCOMES.get(r.delivery.outcome, 0),  # type: ignore[arg-type]
                        outcome=OUTCOMES[r.result.outcome],  # type: ignore[arg-type]
                        changed=changed,
                        plan=r.result.plan or "",
                        previous_plan=r.result.previous_plan or "",
                        note="; ".join(r.result.notes),
                    )
                )
            yield sync_pb.ReplayDeliveriesResponse(
                done=progress.done, total=progress.total, results=results
            )

    async def VerifyState(
        self, request: sync_pb.VerifyStateRequest, context: Context
    ) -> AsyncIterator[sync_pb.VerifyStateResponse]:
        last = Progress(0, 0)
        async for step in verify(self._store, self._store.catalog):
            if isinstance(step, Progress):
                last = step
                yield sync_pb.VerifyStateResponse(done=step.done, total=step.total)
                continue
            if step.differences:
                log.warning("verify: %d differences from the stored log", len(step.differences))
            yield sync_pb.VerifyStateResponse(
                done=last.done,
                total=last.total,
                finished=True,
                subjects_checked=step.subjects_checked,
                differences=[
                    sync_pb.StateDifference(subject=subject, description=text)
                    for subject, text in step.differences
                ],
            )

    async def CheckCatalog(
        self, request: sync_pb.CheckCatalogRequest, context: Context
    ) -> sync_pb.CheckCatalogResponse:
        settings = self._clerk_settings("catalog check")
        try:
            async with ClerkApi(settings) as api:
                plans = await api.plans()
        except ClerkApiError as exc:
            raise Unavailable(f"Clerk API: {exc}") from exc
        check = check_catalog(self._store.catalog, plans)
        return sync_pb.CheckCatalogResponse(
            unmapped_clerk_plans=[
                sync_pb.ClerkPlan(id=p.id, slug=p.slug, name=p.name) for p in check.unmapped
            ],
            unknown_catalog_slugs=list(check.unknown_slugs),
            clerk_plans=check.clerk_plans,
        )

    def changed(self, result: ApplyResult) -> None:
        """Read-your-writes on this replica; other replicas hear the NOTIFY."""
        if (
            self._hub is not None
            and result.subject
            and result.version
            and result.outcome == Outcome.APPLIED
        ):
            self._hub.on_change(result.version, result.subject)
