"""The service's Prometheus endpoint (ENTITLEMENTS_METRICS_LISTEN) on a real process: the
standard gRPC server series by code, and the cache, Watch, change-stream, delivery, pool and
listener series; `off` serves none."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from tests.support import SYNC_SECRET, load_fixture, new_event_id
from tests.support.metrics import rpc, scrape_until, value
from tests.support.service_process import free_port, service_process

pytestmark = pytest.mark.e2e

STARTED = "grpc_server_started_total"
HANDLED = "grpc_server_handled_total"
SECONDS_COUNT = "grpc_server_handling_seconds_count"
UNARY = {"grpc_type": "unary"}


def test_every_series_an_operator_needs(database_url: str, tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {
        "DATABASE_URL": database_url,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{port}",
        "ENTITLEMENTS_HTTP_LISTEN": f"127.0.0.1:{http_port}",
    }
    with (
        service_process(env, tmp_path / "service.log") as (_proc, target),
        grpc.insecure_channel(target) as channel,
    ):
        ready = scrape_until(
            url,
            lambda s: (
                value(s, "entitlements_change_listener_connected") == 1
                and value(s, "entitlements_cache_live") == 1
            ),
        )
        assert value(ready, "entitlements_change_listener_connected") == 1
        assert value(ready, "entitlements_db_pool_connections_max") == 10
        reads = pb_grpc.EntitlementServiceStub(channel)
        subject = "user_metrics_" + new_event_id()[4:12]
        for _ in range(3):
            reads.CanUse(pb.CanUseRequest(subject=subject, feature="aiInsights"), timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            reads.CanUse(pb.CanUseRequest(subject="", feature="aiInsights"), timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # Over Connect (ENTITLEMENTS_HTTP_LISTEN): the same method's series.
        connect = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/entitlements.v1.EntitlementService/CanUse",
            data=json.dumps({"subject": subject, "feature": "aiInsights"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(connect, timeout=5) as answer:
            assert json.loads(answer.read())["allowed"] is True

        sync = sync_grpc.BillingSyncServiceStub(channel)
        delivery = sync_pb.ApplyBillingEventRequest(
            event_id=new_event_id(),
            type="subscriptionItem.active",
            payload=json.dumps(load_fixture("item_active_pro_month")).encode(),
        )
        with pytest.raises(grpc.RpcError) as denied:
            sync.ApplyBillingEvent(delivery, metadata=(("authorization", "Bearer wrong"),))
        assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", f"Bearer {SYNC_SECRET}"),)
        outcomes = [sync.ApplyBillingEvent(delivery, metadata=auth).outcome for _ in range(2)]
        assert outcomes == [sync_pb.APPLIED, sync_pb.DUPLICATE]

        stream = reads.WatchEntitlements(pb.WatchEntitlementsRequest(subjects=[subject]))
        first = threading.Event()

        def read_first() -> None:
            next(stream)
            first.set()

        threading.Thread(target=read_first, daemon=True).start()
        assert first.wait(10)
        watching = scrape_until(url, lambda s: value(s, "entitlements_watch_streams") == 1)
        stream.cancel()
        after = scrape_until(
            url,
            lambda s: (
                value(s, "entitlements_watch_streams") == 0
                and value(
                    s,
                    HANDLED,
                    **rpc("WatchEntitlements"),
                    grpc_type="server_stream",
                    grpc_code="CANCELLED",
                )
                == 1
            ),
        )

    can_use = {**UNARY, **rpc("CanUse")}
    assert value(after, STARTED, **can_use) == 5
    assert value(after, HANDLED, **can_use, grpc_code="OK") == 4
    assert value(after, HANDLED, **can_use, grpc_code="INVALID_ARGUMENT") == 1
    assert value(after, SECONDS_COUNT, **can_use) == 5
    apply = {**UNARY, **rpc("ApplyBillingEvent", "entitlements.v1.BillingSyncService")}
    assert value(after, STARTED, **apply) == 3
    assert value(after, HANDLED, **apply, grpc_code="UNAUTHENTICATED") == 1
    assert value(after, HANDLED, **apply, grpc_code="OK") == 2
    watch = {"grpc_type": "server_stream", **rpc("WatchEntitlements")}
    assert value(watching, "entitlements_watch_streams") == 1
    assert value(watching, STARTED, **watch) == 1
    assert value(watching, "grpc_server_msg_sent_total", **watch) >= 1
    assert value(after, HANDLED, **watch, grpc_code="CANCELLED") == 1

    assert value(after, "entitlements_deliveries_total", outcome="APPLIED") == 1
    assert value(after, "entitlements_deliveries_total", outcome="DUPLICATE") == 1
    # The first read of the subject loads it, the next three are answered from the cache.
    assert value(after, "entitlements_cache_misses_total") >= 1
    assert value(after, "entitlements_cache_hits_total") >= 3
    assert value(after, "entitlements_cache_subjects") >= 1
    assert 0 <= value(after, "entitlements_watch_lag_seconds") < 5
    assert 1 <= value(after, "entitlements_db_pool_connections_open") <= 10
    assert 0 <= value(after, "entitlements_db_pool_connections_in_use") <= 10
    # The collector's pauses, by generation: the series are there from the start (young
    # collections come every 2 000 new objects, so a few calls may not have made one yet).
    for generation in ("0", "1", "2"):
        pauses = ("entitlements_gc_pause_seconds_count", frozenset({("generation", generation)}))
        assert pauses in after


def test_off_serves_no_metrics(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"DATABASE_URL": database_url, "ENTITLEMENTS_METRICS_LISTEN": "off"}
    with service_process(env, tmp_path / "service.log"):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert "Prometheus metrics on" not in (tmp_path / "service.log").read_text()
