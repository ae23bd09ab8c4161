"""`entitlements-service --workers N`: N processes on one port, each kept fresh by NOTIFY."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import grpc
import psutil
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from tests.support import SYNC_SECRET, event, now_ms
from tests.support.metrics import rpc, scrape_until, value
from tests.support.service_process import SCRIPTS, free_port, wait_serving

pytestmark = pytest.mark.e2e


def can_use_fresh_connection(target: str, subject: str) -> bool:
    # A new channel per call: SO_REUSEPORT spreads connections over the workers.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        r = pb_grpc.EntitlementServiceStub(ch).CanUse(
            pb.CanUseRequest(subject=subject, feature="dataExport"), timeout=10
        )
        return bool(r.allowed)


def test_workers_share_one_port_and_all_see_a_change(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{(metrics_port := free_port())}/metrics"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_LISTEN": target,
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    with open(tmp_path / "workers.log", "wb") as log:
        parent = subprocess.Popen(
            [str(SCRIPTS / "entitlements-service"), "--workers", "2"],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        wait_serving(target)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listening = {
                c.pid
                for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
            }
            if len(listening) == 2:
                break
            time.sleep(0.1)
        children = {p.pid for p in psutil.Process(parent.pid).children()}
        assert len(listening) == 2 and listening <= children

        who = f"user_workers_{secrets.token_hex(4)}"
        for _ in range(10):  # fill both workers' caches with "free"
            assert not can_use_fresh_connection(target, who)
        with grpc.insecure_channel(target) as ch:
            sync_grpc.BillingSyncServiceStub(ch).ApplyBillingEvent(
                sync_pb.ApplyBillingEventRequest(
                    event_id="msg_" + secrets.token_hex(8),
                    payload=json.dumps(
                        event("item_active_pro_month", at_ms=now_ms(), subject=who)
                    ).encode(),
                ),
                metadata=(("authorization", f"Bearer {SYNC_SECRET}"),),
                timeout=10,
            )
        time.sleep(0.2)
        assert all(can_use_fresh_connection(target, who) for _ in range(20))

        # One scrape of the supervisor sees every worker: the calls of both, and the pool
        # gauges of both added up (10 connections allowed each).
        can_use = {"grpc_type": "unary", **rpc("CanUse")}
        samples = scrape_until(  # published once a second
            metrics_url,
            lambda s: (
                value(s, "entitlements_db_pool_connections_max") == 20
                and value(s, "grpc_server_started_total", **can_use) >= 30
            ),
        )
        assert value(samples, "entitlements_db_pool_connections_max") == 20
        assert value(samples, "grpc_server_started_total", **can_use) == 30
        assert value(samples, "grpc_server_handled_total", **can_use, grpc_code="OK") == 30
        assert value(samples, "entitlements_deliveries_total", outcome="APPLIED") == 1
        assert value(samples, "entitlements_change_listener_connected") == 1
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0
    assert "started 2 workers" in (tmp_path / "workers.log").read_text()
