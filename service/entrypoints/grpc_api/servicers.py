"""gRPC servicers: validate and convert the request, call a use case, build the response."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from service.application.app import Application
from service.application.progress import Progress
from service.application.records import CacheEntry, DeliverySelector
from service.domain.bounds import echo, storable_text, within_window
from service.domain.deliveries import Delivery
from service.domain.errors import InvalidArgument, OutOfRange
from service.domain.resolution import Entitlements, feature_decision, limit_decision
from service.domain.subjects import require_subject
from service.entrypoints.grpc_api.mapping import (
    HISTORY_KINDS,
    OUTCOMES,
    REASONS,
    RECONCILE_STATUSES,
    change_fields,
    entitlements_message,
    limits_message,
    metered_messages,
    ms_of,
    plans_message,
    timestamp,
)
from service.entrypoints.grpc_api.watch import WatchStreams
from service.entrypoints.message_limits import WATCH_MAX_SUBJECTS

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_EVENT_ID_BYTES = 255
DEFAULT_HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000

Context = aio.ServicerContext[Any, Any]
R = TypeVar("R")
M = TypeVar("M", pb.GetLimitsResponse, pb.GetEntitlementsResponse)


class EntitlementServicer(pb_grpc.EntitlementServiceServicer):
    """The read side: answers from the reader (cache, else PostgreSQL), resolved at call time."""

    def __init__(self, app: Application, watch_max_subjects: int = WATCH_MAX_SUBJECTS) -> None:
        self._app = app
        self._reader = app.reads
        self._catalog = app.catalog
        self._features = app.catalog.features
        self._watch = WatchStreams(app, entitlements_message, watch_max_subjects)
        self._plans = plans_message(app.catalog)  # the catalog never changes while serving

    # Responses built from a cache entry are memoised in the entry (immutable, so is its
    # answer), living as long as the cache keeps it.

    def _memoised(self, entry: CacheEntry, key: Any, build: Callable[[Entitlements], R]) -> R:
        """The response `build` makes of the entry's entitlements, built once per entry."""
        memo = entry.memo
        response: R | None = memo.get(key)
        if response is None:
            response = memo[key] = build(entry.entitlements)
        return response

    async def _with_usage(self, entry: CacheEntry, message: M) -> M:
        """With metered limits, the message (built once per entry) with the subject's usage
        now, read from PostgreSQL on every call: usage moves with every consumption."""
        if not self._catalog.meters:
            return message
        found = await self._app.usage.usage(entry.entitlements.subject)
        answer = type(message)()
        answer.CopyFrom(message)
        del answer.metered[:]
        answer.metered.extend(metered_messages(found))
        return answer

    def _require_feature(self, feature: str) -> None:
        if feature not in self._features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")

    def _can_use(self, entry: CacheEntry, feature: str) -> pb.CanUseResponse:
        memo = entry.memo
        response: pb.CanUseResponse | None = memo.get(feature)
        if response is None:
            ent = entry.entitlements
            allowed, reason = feature_decision(ent, feature)
            response = memo[feature] = pb.CanUseResponse(
                allowed=allowed,
                plan=ent.plan.name,
                reason=REASONS[reason],  # type: ignore[arg-type]
                valid_until=timestamp(ent.valid_until_ms),
            )
        return response

    async def CanUse(self, request: pb.CanUseRequest, context: Context) -> pb.CanUseResponse:
        feature = request.feature
        if feature not in self._features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")
        return self._can_use(await self._reader.get(request.subject), feature)

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
        return await self._with_usage(entry, self._memoised(entry, GetLimits, limits_message))

    async def CheckLimit(
        self, request: pb.CheckLimitRequest, context: Context
    ) -> pb.CheckLimitResponse:
        if request.limit not in self._catalog.limit_names:
            raise InvalidArgument(f"unknown limit {echo(request.limit)}")
        if request.current_usage < 0 or request.requested < 0:
            raise InvalidArgument("current_usage and requested must not be negative")
        ent = (await self._reader.get(request.subject)).entitlements
        usage = request.current_usage
        if usage == 0 and request.limit in self._catalog.meters:  # none passed: the stored
            found = await self._app.usage.usage(request.subject)
            usage = next(
                u.counter.used + u.counter.reserved for u in found if u.limit == request.limit
            )
        decision = limit_decision(ent, request.limit, usage, request.requested)
        return pb.CheckLimitResponse(
            allowed=decision.allowed,
            limit=decision.limit.value,
            remaining=decision.remaining,
            unlimited=decision.limit.unlimited,
            plan=ent.plan.name,
            valid_until=timestamp(
                ent.shown_until_ms if request.limit in self._catalog.meters else ent.valid_until_ms
            ),
        )

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: Context
    ) -> pb.GetEntitlementsResponse:
        entry = await self._reader.get(request.subject)
        return await self._with_usage(
            entry, self._memoised(entry, GetEntitlements, entitlements_message)
        )

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: Context
    ) -> pb.ListPlansResponse:
        return self._plans

    async def WatchEntitlements(
        self, request: pb.WatchEntitlementsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Replay the change log from `since_version`, then follow it live (see watch.py).

        `version` in every message is a stream position: resuming from it misses nothing
        (a change may come twice; applying it again is harmless). A message with an empty
        `subject` is a heartbeat: "caught up", sent at least every second.
        """
        self._watch.check_subject_count(len(request.subjects))  # before any per-subject work
        subjects = [require_subject(s) for s in request.subjects] or None
        since: int | None = None
        if request.HasField("since_version"):
            if request.since_version < 0:
                raise InvalidArgument("since_version must not be negative")
            pruned, ceiling = await self._app.change_log.change_log_bounds()
            since = request.since_version
            if since < pruned or since > ceiling:
                raise OutOfRange(
                    f"since_version {since} is outside the change log "
                    f"({pruned}..{ceiling}); re-sync and watch without since_version"
                )
        peer = _peer_address(context)
        async for message in self._watch.stream(subjects, since, peer, request.log_id):
            yield message


# Memo keys for whole-subject answers (features are strings, so these cannot collide).
GetLimits = ("limits",)
GetEntitlements = ("entitlements",)


def _peer_address(context: Context) -> str:
    """The caller's address without its port ("ipv4:10.0.0.7"), for per-client limits."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class BillingSyncServicer(sync_grpc.BillingSyncServiceServicer):
    """The write side, behind the bearer-secret interceptor."""

    def __init__(self, app: Application) -> None:
        self._app = app

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
        now_ms = self._app.clock.now_ms()
        # Times from the caller are bounded like any other: out of the window, ours are used.
        received_ms = within_window(ms_of(request.received_at, now_ms)) or now_ms
        signed_ms = within_window(ms_of(request.signed_at, received_ms)) or received_ms
        result = await self._app.apply_delivery(
            Delivery(event_id, request.type, request.payload, received_ms, signed_ms)
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
        rows = await self._app.operations.history(subject, page)
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
        expires_at_ms = ms_of(request.expires_at, -1) if request.HasField("expires_at") else None
        grant_id, result = await self._app.grants.grant(
            request.subject, request.plan, expires_at_ms, request.reason
        )
        return sync_pb.GrantPlanResponse(grant_id=grant_id, **change_fields(result))

    async def RevokeGrant(
        self, request: sync_pb.RevokeGrantRequest, context: Context
    ) -> sync_pb.RevokeGrantResponse:
        result = await self._app.grants.revoke(request.grant_id, request.reason)
        return sync_pb.RevokeGrantResponse(grant_id=request.grant_id, **change_fields(result))

    async def SetOverride(
        self, request: sync_pb.SetOverrideRequest, context: Context
    ) -> sync_pb.SetOverrideResponse:
        expires_at_ms = ms_of(request.expires_at, -1) if request.HasField("expires_at") else None
        override_id, result = await self._app.overrides.set(
            request.subject,
            feature=request.feature,
            limit=request.limit,
            enabled=request.enabled,
            value=request.value,
            unlimited=request.unlimited,
            expires_at_ms=expires_at_ms,
            reason=request.reason,
        )
        return sync_pb.SetOverrideResponse(override_id=override_id, version=result.version)

    async def RemoveOverride(
        self, request: sync_pb.RemoveOverrideRequest, context: Context
    ) -> sync_pb.RemoveOverrideResponse:
        result = await self._app.overrides.remove(request.override_id, request.reason)
        return sync_pb.RemoveOverrideResponse(version=result.version)

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
        async for progress in self._app.reconcile_or_refuse().run(subjects):
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
        async for progress in self._app.replay(selector):
            yield sync_pb.ReplayDeliveriesResponse(
                done=progress.done,
                total=progress.total,
                results=[
                    sync_pb.ReplayedDelivery(
                        event_id=r.delivery.event_id,
                        type=r.delivery.type,
                        subject=r.result.subject or "",
                        previous_outcome=OUTCOMES.get(r.delivery.outcome, 0),  # type: ignore[arg-type]
                        outcome=OUTCOMES[r.result.outcome],  # type: ignore[arg-type]
                        changed=r.changed,
                        plan=r.result.plan or "",
                        previous_plan=r.result.previous_plan or "",
                        note="; ".join(r.result.notes),
                    )
                    for r in progress.batch
                ],
            )

    async def VerifyState(
        self, request: sync_pb.VerifyStateRequest, context: Context
    ) -> AsyncIterator[sync_pb.VerifyStateResponse]:
        last: Progress[object] = Progress(0, 0)
        async for step in self._app.verify():
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
        check = await self._app.catalog_check_or_refuse()()
        return sync_pb.CheckCatalogResponse(
            unmapped_clerk_plans=[
                sync_pb.ClerkPlan(id=p.id, slug=p.slug, name=p.name) for p in check.unmapped
            ],
            unknown_catalog_slugs=list(check.unknown_slugs),
            clerk_plans=check.clerk_plans,
        )
