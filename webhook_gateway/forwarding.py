"""Forwarding verified deliveries to BillingSyncService over one long-lived gRPC channel.

`DeliveryForwarder` is what the gateway's handlers need (create_app takes any): `Forwarder`
is the gRPC one; its failures reach the handlers as `ForwardFailed`, with the status code, so
the status table in app.py is the same for any forwarder and tested with a fake one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements_client import Tls
from entitlements_common.settings import bearer


@dataclass(frozen=True)
class ForwardResult:
    outcome: str
    subject: str
    plan: str
    previous_plan: str


class ForwardFailed(Exception):
    """The service did not apply a delivery: its gRPC status and the status's details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class DeliveryForwarder(Protocol):
    async def forward(
        self, event_id: str, event_type: str, body: bytes, signed_at_seconds: int
    ) -> ForwardResult:
        """Apply one delivery; raises `ForwardFailed` when the service did not."""

    async def service_ready(self) -> bool: ...

    async def close(self) -> None: ...


class Forwarder:
    def __init__(
        self,
        target: str,
        sync_secret: str | None,
        timeout_seconds: float,
        tls: Tls | None = None,
        interceptors: Sequence[aio.ClientInterceptor] | None = None,
    ) -> None:
        options = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._channel = (
            aio.insecure_channel(target, options=options, interceptors=interceptors)
            if tls is None
            else aio.secure_channel(
                target, tls.credentials(), options=options, interceptors=interceptors
            )
        )
        self._stub = sync_grpc.BillingSyncServiceStub(self._channel)
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = bearer(sync_secret)
        self._timeout = timeout_seconds

    async def close(self) -> None:
        await self._channel.close()

    async def forward(
        self, event_id: str, event_type: str, body: bytes, signed_at_seconds: int
    ) -> ForwardResult:
        """Apply one delivery; raises `ForwardFailed` on failure."""
        received = Timestamp()
        received.FromNanoseconds(time.time_ns())
        request = sync_pb.ApplyBillingEventRequest(
            event_id=event_id,
            type=event_type,
            payload=body,
            received_at=received,
            signed_at=Timestamp(seconds=signed_at_seconds),
        )
        try:
            response = await self._stub.ApplyBillingEvent(
                request, metadata=self._metadata, timeout=self._timeout, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as exc:
            raise ForwardFailed(exc.code(), exc.details() or "") from exc
        return ForwardResult(
            outcome=sync_pb.Outcome.Name(response.outcome),
            subject=response.subject,
            plan=response.plan,
            previous_plan=response.previous_plan,
        )

    async def service_ready(self) -> bool:
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service="entitlements.v1.BillingSyncService"),
                timeout=1.0,
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
