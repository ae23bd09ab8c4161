"""UsageService (SPEC §10.1) over gRPC, and the usage the read side shows with entitlements.

Validation and the rules are the use cases' (service/application/usage.py); this module
converts requests and answers only.
"""

from __future__ import annotations

from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from service.application.app import Application
from service.entrypoints.grpc_api.mapping import timestamp
from service.entrypoints.grpc_api.servicers import Context


class UsageServicer(usage_grpc.UsageServiceServicer):
    def __init__(self, app: Application) -> None:
        self._usage = app.usage

    async def Consume(
        self, request: usage_pb.ConsumeRequest, context: Context
    ) -> usage_pb.ConsumeResponse:
        answer, duplicate = await self._usage.consume(
            request.subject, request.limit, request.amount, request.idempotency_key
        )
        return usage_pb.ConsumeResponse(
            allowed=answer.allowed,
            used=answer.used,
            remaining=answer.remaining,
            unlimited=answer.unlimited,
            resets_at=timestamp(answer.period.end_ms),
            duplicate=duplicate,
            limit_value=answer.limit_value,
        )

    async def ReportUsage(
        self, request: usage_pb.ReportUsageRequest, context: Context
    ) -> usage_pb.ReportUsageResponse:
        change = request.WhichOneof("change")
        answer, duplicate = await self._usage.report(
            request.subject,
            request.limit,
            request.delta if change == "delta" else None,
            request.set if change == "set" else None,
            request.idempotency_key,
        )
        return usage_pb.ReportUsageResponse(
            used=answer.used,
            remaining=answer.remaining,
            unlimited=answer.unlimited,
            resets_at=timestamp(answer.period.end_ms),
            duplicate=duplicate,
            limit_value=answer.limit_value,
        )

    async def Reserve(
        self, request: usage_pb.ReserveRequest, context: Context
    ) -> usage_pb.ReserveResponse:
        answer, duplicate = await self._usage.reserve(
            request.subject,
            request.limit,
            request.amount,
            request.ttl_seconds,
            request.idempotency_key,
        )
        return usage_pb.ReserveResponse(
            allowed=answer.allowed,
            reservation_id=answer.reservation_id or "",
            expires_at=timestamp(answer.expires_at_ms),
            used=answer.used,
            remaining=answer.remaining,
            unlimited=answer.unlimited,
            duplicate=duplicate,
            resets_at=timestamp(answer.period.end_ms),
        )

    async def CommitReservation(
        self, request: usage_pb.CommitReservationRequest, context: Context
    ) -> usage_pb.CommitReservationResponse:
        answer = await self._usage.finish(request.reservation_id, request.amount)
        return usage_pb.CommitReservationResponse(
            used=answer.used, remaining=answer.remaining, unlimited=answer.unlimited
        )

    async def ReleaseReservation(
        self, request: usage_pb.ReleaseReservationRequest, context: Context
    ) -> usage_pb.ReleaseReservationResponse:
        answer = await self._usage.finish(request.reservation_id, None)
        return usage_pb.ReleaseReservationResponse(
            used=answer.used, remaining=answer.remaining, unlimited=answer.unlimited
        )

    async def GetUsage(
        self, request: usage_pb.GetUsageRequest, context: Context
    ) -> usage_pb.GetUsageResponse:
        found = await self._usage.usage(request.subject)
        return usage_pb.GetUsageResponse(
            subject=request.subject,
            usage=[
                usage_pb.MeteredUsage(
                    limit=u.limit,
                    used=u.counter.used,
                    reserved=u.counter.reserved,
                    remaining=u.remaining,
                    unlimited=u.value.unlimited,
                    period_start=timestamp(u.counter.period.start_ms),
                    resets_at=timestamp(u.counter.period.end_ms),
                    limit_value=0 if u.value.unlimited else u.value.value,
                )
                for u in found
            ],
        )
