"""The write side's gRPC servicer (BillingSyncService, behind the sync secret): validate and
convert the request, call a use case, build the response."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from service.application.app import Application
from service.application.progress import Progress
from service.application.records import DeliverySelector
from service.domain.bounds import storable_text, within_window
from service.domain.deliveries import Delivery
from service.domain.errors import InvalidArgument
from service.domain.subjects import require_subject
from service.entrypoints.grpc_api.mapping import (
    OUTCOMES,
    RECONCILE_STATUSES,
    change_fields,
    history_message,
    ms_of,
    timestamp,
)
from service.entrypoints.grpc_api.servicers import (
    MAX_BATCH,
    MAX_EVENT_ID_BYTES,
    Context,
)

log = logging.getLogger(__name__)


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
        rows = await self._app.history(request.subject, request.page_size)
        return history_message(request.subject, rows)

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

    async def GetServiceStatus(
        self, request: sync_pb.GetServiceStatusRequest, context: Context
    ) -> sync_pb.GetServiceStatusResponse:
        report = await self._app.status(request.window_hours)
        return sync_pb.GetServiceStatusResponse(
            serving=report.serving,
            change_feed_following=report.following,
            listening=report.listening,
            log_id=report.log_id,
            catalog_fingerprint=report.catalog_fingerprint,
            unknown_plan_policy=report.unknown_plan_policy,
            window_hours=report.window_hours,
            unknown_plans=[
                sync_pb.UnknownPlanSighting(
                    slug=storable_text(s.slug, 200),
                    plan_id=storable_text(s.plan_id, 200),
                    deliveries=s.deliveries,
                    first_seen=timestamp(s.first_seen_ms),
                    last_seen=timestamp(s.last_seen_ms),
                    example_subject=s.example_subject,
                    example_event_id=s.example_event_id,
                    note=storable_text(s.note, 1000),
                )
                for s in report.unknown_plans
            ],
            unknown_plans_truncated=report.truncated,
            server_time=timestamp(report.now_ms),
        )
