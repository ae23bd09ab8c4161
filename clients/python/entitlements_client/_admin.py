"""`AdminClient`: the operators' side of the service (BillingSyncService): grants, per-customer
overrides, history, reconciliation, replay, verification and the catalog check. Every call
carries the sync secret (BILLING_WEBHOOK_SYNC_SECRET on the server); answers are the
dataclasses of _admin_answers.py, failures the library's exception tree."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import grpc

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements_client._admin_answers import (
    CatalogCheck,
    History,
    OverrideChange,
    PlanChange,
    ReconcileProgress,
    ReplayProgress,
    VerifyProgress,
)
from entitlements_client._config import Tls, connect, metadata
from entitlements_client._errors import ClientConfigError, InvalidArgument, error_from_rpc

R = TypeVar("R")


def override_request(
    subject: str,
    feature: str | None,
    limit: str | None,
    enabled: bool | None,
    value: int | None,
    unlimited: bool,
    expires_at: datetime | None,
    reason: str,
) -> sync_pb.SetOverrideRequest:
    """SetOverride's request, or `InvalidArgument` naming what is missing or extra."""
    if bool(feature) == bool(limit):
        raise InvalidArgument("give exactly one of feature and limit")
    if not reason or not reason.strip():
        raise InvalidArgument("a reason is required")
    request = sync_pb.SetOverrideRequest(subject=subject, reason=reason)
    if feature:
        if enabled is None:
            raise InvalidArgument(
                "a feature override needs enabled=True (grant) or False (withhold)"
            )
        if value is not None or unlimited:
            raise InvalidArgument("a feature override takes enabled, not a value")
        request.feature, request.enabled = feature, enabled
    else:
        assert limit
        if enabled is not None:
            raise InvalidArgument("a limit override takes value or unlimited, not enabled")
        if (value is None) == (not unlimited):
            raise InvalidArgument("a limit override needs exactly one of value and unlimited")
        if value is not None and value < 0:
            raise InvalidArgument("value must be 0 or more")
        request.limit, request.value, request.unlimited = limit, value or 0, unlimited
    if expires_at is not None:  # naive: UTC (as protobuf takes it, and as `grant` does)
        request.expires_at.FromDatetime(expires_at)
    return request


class AdminClient:
    """Blocking calls; the streaming ones (reconcile, replay, verify) yield progress."""

    def __init__(
        self, target: str, *, secret: str, tls: Tls | None = None, timeout: float = 10.0
    ) -> None:
        if not secret:
            raise ClientConfigError("the sync secret is required")
        self._channel = connect(target, tls)
        self._stub = sync_grpc.BillingSyncServiceStub(self._channel)
        self._metadata = metadata(secret)
        self._timeout = timeout

    def _call(self, method: Callable[..., R], request: object, timeout: float | None = None) -> R:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self._timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def _stream(self, method: Callable[..., Iterator[R]], request: object) -> Iterator[R]:
        try:
            yield from method(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def grant(
        self, subject: str, plan: str, reason: str, expires_at: datetime | None = None
    ) -> PlanChange:
        request = sync_pb.GrantPlanRequest(subject=subject, plan=plan, reason=reason)
        if expires_at is not None:
            request.expires_at.FromDatetime(expires_at)
        return PlanChange.from_message(self._call(self._stub.GrantPlan, request))

    def revoke(self, grant_id: str, reason: str = "") -> PlanChange:
        request = sync_pb.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return PlanChange.from_message(self._call(self._stub.RevokeGrant, request))

    def set_override(
        self,
        subject: str,
        *,
        feature: str | None = None,
        limit: str | None = None,
        enabled: bool | None = None,
        value: int | None = None,
        unlimited: bool = False,
        expires_at: datetime | None = None,
        reason: str,
    ) -> OverrideChange:
        """A per-customer term on top of the plan (SPEC §10.2): `feature` with `enabled`
        (True grants it, False withholds it), or `limit` with `value` or `unlimited`. Checked
        here first, so that a forgotten `enabled` is never sent as "withhold"."""
        request = override_request(
            subject, feature, limit, enabled, value, unlimited, expires_at, reason
        )
        answer = self._call(self._stub.SetOverride, request)
        return OverrideChange(answer.override_id, answer.version)

    def remove_override(self, override_id: str, reason: str = "") -> OverrideChange:
        request = sync_pb.RemoveOverrideRequest(override_id=override_id, reason=reason)
        answer = self._call(self._stub.RemoveOverride, request)
        return OverrideChange(override_id, answer.version)

    def history(self, subject: str, limit: int = 100) -> History:
        request = sync_pb.GetSubjectHistoryRequest(subject=subject, page_size=limit)
        return History.from_message(self._call(self._stub.GetSubjectHistory, request))

    def reconcile(
        self, subjects: Sequence[str] = (), *, all_subjects: bool = False
    ) -> Iterator[ReconcileProgress]:
        request = sync_pb.ReconcileRequest(subjects=list(subjects), all=all_subjects)
        for message in self._stream(self._stub.Reconcile, request):
            yield ReconcileProgress.from_message(message)

    def replay(
        self, *, all_deliveries: bool = False, subject: str = "", unparseable: bool = False
    ) -> Iterator[ReplayProgress]:
        request = sync_pb.ReplayDeliveriesRequest(
            all=all_deliveries, subject=subject, unparseable=unparseable
        )
        for message in self._stream(self._stub.ReplayDeliveries, request):
            yield ReplayProgress.from_message(message)

    def verify(self) -> Iterator[VerifyProgress]:
        for message in self._stream(self._stub.VerifyState, sync_pb.VerifyStateRequest()):
            yield VerifyProgress.from_message(message)

    def check_catalog(self) -> CatalogCheck:
        """Catalog against Clerk's plans (asks Clerk's Backend API: up to two minutes)."""
        answer = self._call(self._stub.CheckCatalog, sync_pb.CheckCatalogRequest(), 120)
        return CatalogCheck.from_message(answer)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
