"""WatchEntitlements' wire messages (the protocol itself, what is sent and when, is the
application's: service/application/watch.py). The gRPC and the Connect servers share them."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import entitlement_service_pb2 as pb
from service.domain.resolution import Entitlements

ToMessage = Callable[[Entitlements], pb.GetEntitlementsResponse]


class WatchMessages:
    """`MessageBuilder` of pb.WatchEntitlementsResponse."""

    def __init__(self, to_message: ToMessage) -> None:
        self._to_message = to_message

    def change(
        self, subject: str, entitlements: Entitlements, version: int
    ) -> pb.WatchEntitlementsResponse:
        return pb.WatchEntitlementsResponse(
            subject=subject, entitlements=self._to_message(entitlements), version=version
        )

    def heartbeat(
        self, position: int, lag_ms: int, server_time_ms: int, log_id: str, catalog: str
    ) -> pb.WatchEntitlementsResponse:
        """An empty `subject`: the resume point, the server's clock, the lag, the change log
        and the catalog fingerprint."""
        now = Timestamp()
        now.FromMilliseconds(server_time_ms)
        lag = Duration()
        lag.FromMilliseconds(lag_ms)
        return pb.WatchEntitlementsResponse(
            subject="",
            version=position,
            server_time=now,
            lag=lag,
            log_id=log_id,
            catalog_fingerprint=catalog,
        )
