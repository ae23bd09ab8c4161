"""The CLI's own calls on the service's generated stubs (`entitlements.v1`): under --json it
prints each response as grpcurl would (protobuf's JSON mapping), so it keeps the messages the
client library's dataclasses are made from. The channel (keepalive, TLS) and the mapping of a
failed call to an error code are the client library's public `connect` and `error_from_rpc`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from entitlements_cli.settings import sync_secret, target, tls
from entitlements_client import connect
from entitlements_common.settings import bearer

TIMEOUT = 10.0


def read_stub(args: argparse.Namespace) -> pb_grpc.EntitlementServiceStub:
    return pb_grpc.EntitlementServiceStub(connect(target(args), tls()))


def usage_stub(args: argparse.Namespace) -> usage_grpc.UsageServiceStub:
    return usage_grpc.UsageServiceStub(connect(target(args), tls()))


class Operator:
    """BillingSyncService's calls with the sync secret; answers as the service sends them."""

    def __init__(self, args: argparse.Namespace) -> None:
        secret = sync_secret()
        self._channel = connect(target(args), tls())
        self._stub = sync_grpc.BillingSyncServiceStub(self._channel)
        self._auth = bearer(secret)

    def grant(
        self, subject: str, plan: str, reason: str, expires_at: datetime | None
    ) -> sync_pb.GrantPlanResponse:
        request = sync_pb.GrantPlanRequest(subject=subject, plan=plan, reason=reason)
        if expires_at is not None:
            request.expires_at.FromDatetime(expires_at)
        return self._stub.GrantPlan(request, metadata=self._auth, timeout=TIMEOUT)

    def revoke(self, grant_id: str, reason: str) -> sync_pb.RevokeGrantResponse:
        request = sync_pb.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return self._stub.RevokeGrant(request, metadata=self._auth, timeout=TIMEOUT)

    def set_override(self, request: sync_pb.SetOverrideRequest) -> sync_pb.SetOverrideResponse:
        return self._stub.SetOverride(request, metadata=self._auth, timeout=TIMEOUT)

    def remove_override(self, override_id: str, reason: str) -> sync_pb.RemoveOverrideResponse:
        request = sync_pb.RemoveOverrideRequest(override_id=override_id, reason=reason)
        return self._stub.RemoveOverride(request, metadata=self._auth, timeout=TIMEOUT)

    def history(self, subject: str, limit: int) -> sync_pb.GetSubjectHistoryResponse:
        request = sync_pb.GetSubjectHistoryRequest(subject=subject, page_size=limit)
        return self._stub.GetSubjectHistory(request, metadata=self._auth, timeout=TIMEOUT)

    def reconcile(
        self, subjects: Sequence[str], all_subjects: bool
    ) -> Iterator[sync_pb.ReconcileResponse]:
        request = sync_pb.ReconcileRequest(subjects=list(subjects), all=all_subjects)
        yield from self._stub.Reconcile(request, metadata=self._auth)

    def replay(
        self, all_deliveries: bool, subject: str, unparseable: bool
    ) -> Iterator[sync_pb.ReplayDeliveriesResponse]:
        request = sync_pb.ReplayDeliveriesRequest(
            all=all_deliveries, subject=subject, unparseable=unparseable
        )
        yield from self._stub.ReplayDeliveries(request, metadata=self._auth)

    def verify(self) -> Iterator[sync_pb.VerifyStateResponse]:
        yield from self._stub.VerifyState(sync_pb.VerifyStateRequest(), metadata=self._auth)

    def check_catalog(self) -> sync_pb.CheckCatalogResponse:
        request = sync_pb.CheckCatalogRequest()
        return self._stub.CheckCatalog(request, metadata=self._auth, timeout=120)

    def __enter__(self) -> Operator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._channel.close()
