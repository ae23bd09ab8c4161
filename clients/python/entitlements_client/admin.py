"""`AdminClient`: the operators' side of the service (BillingSyncService): grants, per-customer
overrides, history, reconciliation, replay, verification and the catalog check. Every call
carries the sync secret (BILLING_WEBHOOK_SYNC_SECRET on the server). The `entitlements` CLI
is built on it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements_client.core import ClientConfigError, Tls, connect, metadata


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
    """SetOverride's request, or ValueError naming what is missing or extra."""
    if bool(feature) == bool(limit):
        raise ValueError("give exactly one of feature and limit")
    if not reason or not reason.strip():
        raise ValueError("a reason is required")
    request = sync_pb.SetOverrideRequest(subject=subject, reason=reason)
    if feature:
        if enabled is None:
            raise ValueError("a feature override needs enabled=True (grant) or False (withhold)")
        if value is not None or unlimited:
            raise ValueError("a feature override takes enabled, not a value")
        request.feature, request.enabled = feature, enabled
    else:
        assert limit
        if enabled is not None:
            raise ValueError("a limit override takes value or unlimited, not enabled")
        if (value is None) == (not unlimited):
            raise ValueError("a limit override needs exactly one of value and unlimited")
        if value is not None and value < 0:
            raise ValueError("value must be 0 or more")
        request.limit, request.value, request.unlimited = limit, value or 0, unlimited
    if expires_at is not None:  # naive: UTC (as protobuf takes it, and as `grant` does)
        request.expires_at.FromDatetime(expires_at)
    return request


class AdminClient:
    """Blocking calls; the streaming ones (reconcile, replay, verify) yield progress messages."""

    def __init__(
        self, target: str, *, secret: str, tls: Tls | None = None, timeout: float = 10.0
    ) -> None:
        if not secret:
            raise ClientConfigError("the sync secret is required")
        self._channel = connect(target, tls)
        self._stub = sync_grpc.BillingSyncServiceStub(self._channel)
        self._metadata = metadata(secret)
        self._timeout = timeout

    def grant(
        self, subject: str, plan: str, reason: str, expires_at: datetime | None = None
    ) -> sync_pb.GrantPlanResponse:
        request = sync_pb.GrantPlanRequest(subject=subject, plan=plan, reason=reason)
        if expires_at is not None:
            request.expires_at.FromDatetime(expires_at)
        return self._stub.GrantPlan(request, metadata=self._metadata, timeout=self._timeout)

    def revoke(self, grant_id: str, reason: str = "") -> sync_pb.RevokeGrantResponse:
        request = sync_pb.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return self._stub.RevokeGrant(request, metadata=self._metadata, timeout=self._timeout)

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
    ) -> sync_pb.SetOverrideResponse:
        """A per-customer term on top of the plan (SPEC §10.2): `feature` with `enabled`
        (True grants it, False withholds it), or `limit` with `value` or `unlimited`. Checked
        here first, so that a forgotten `enabled` is never sent as "withhold"."""
        request = override_request(
            subject, feature, limit, enabled, value, unlimited, expires_at, reason
        )
        return self._stub.SetOverride(request, metadata=self._metadata, timeout=self._timeout)

    def remove_override(self, override_id: str, reason: str = "") -> sync_pb.RemoveOverrideResponse:
        request = sync_pb.RemoveOverrideRequest(override_id=override_id, reason=reason)
        return self._stub.RemoveOverride(request, metadata=self._metadata, timeout=self._timeout)

    def history(self, subject: str, limit: int = 100) -> sync_pb.GetSubjectHistoryResponse:
        request = sync_pb.GetSubjectHistoryRequest(subject=subject, page_size=limit)
        return self._stub.GetSubjectHistory(request, metadata=self._metadata, timeout=self._timeout)

    def reconcile(
        self, subjects: Sequence[str] = (), *, all_subjects: bool = False
    ) -> Iterator[sync_pb.ReconcileResponse]:
        request = sync_pb.ReconcileRequest(subjects=list(subjects), all=all_subjects)
        yield from self._stub.Reconcile(request, metadata=self._metadata)

    def replay(
        self, *, all_deliveries: bool = False, subject: str = "", unparseable: bool = False
    ) -> Iterator[sync_pb.ReplayDeliveriesResponse]:
        request = sync_pb.ReplayDeliveriesRequest(
            all=all_deliveries, subject=subject, unparseable=unparseable
        )
        yield from self._stub.ReplayDeliveries(request, metadata=self._metadata)

    def verify(self) -> Iterator[sync_pb.VerifyStateResponse]:
        yield from self._stub.VerifyState(sync_pb.VerifyStateRequest(), metadata=self._metadata)

    def check_catalog(self) -> sync_pb.CheckCatalogResponse:
        return self._stub.CheckCatalog(
            sync_pb.CheckCatalogRequest(), metadata=self._metadata, timeout=120
        )

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
