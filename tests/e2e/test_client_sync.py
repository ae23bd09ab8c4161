"""The sync client against real service processes: local checks, and a watch that comes back
after the service restarts and resumes without missing what changed meanwhile."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements_client import EntitlementsClient, EntitlementsError
from tests.support import SYNC_SECRET, event, now_ms
from tests.support.service_process import free_port, service_process

pytestmark = pytest.mark.e2e


def _no_rpc(*args: object, **kwargs: object) -> object:
    raise AssertionError("an RPC was made: the local cache should have answered")


def apply_via(target: str, payload: dict[str, object]) -> None:
    with grpc.insecure_channel(target) as channel:
        sync_grpc.BillingSyncServiceStub(channel).ApplyBillingEvent(
            sync_pb.ApplyBillingEventRequest(
                event_id="msg_" + secrets.token_hex(8), payload=json.dumps(payload).encode()
            ),
            metadata=(("authorization", f"Bearer {SYNC_SECRET}"),),
            timeout=10,
        )


def _answers(client: EntitlementsClient, subject: str, feature: str) -> bool:
    """`can_use`, or False while the channel is still reconnecting (the client raises then:
    it cannot answer, and says so)."""
    try:
        return client.can_use(subject, feature)
    except EntitlementsError:
        return False


def test_sync_client_local_checks_and_resume_after_restart(
    database_url: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    who = f"user_syncclient_{secrets.token_hex(4)}"
    port_a = free_port()
    with service_process(env, tmp_path / "b.log") as (_, target_b):
        with service_process(env, tmp_path / "a.log", port=port_a) as (_, target_a):
            client = EntitlementsClient(target_a, local_cache=True)
            client.start()
            assert client.wait_synced()
            assert client.can_use(who, "aiInsights") and not client.can_use(who, "dataExport")
            assert client.cache is not None and client.cache.fresh(who) is not None
            # Answered in-process: with the check RPCs taken away, checks still answer.
            rpcs: dict[str, Any] = client._rpcs
            real = dict(rpcs)
            rpcs["CanUse"] = rpcs["GetEntitlements"] = _no_rpc
            assert all(client.can_use(who, "aiInsights") for _ in range(10_000))
            assert not client.can_use(who, "dataExport")
            rpcs.update(real)
            assert client.check_limit(who, "maxHabits", 9).allowed
            assert not client.check_limit(who, "maxHabits", 10).allowed
        # Replica A is down: the change happens on B; the client cannot be in sync.
        apply_via(target_b, event("item_active_pro_month", at_ms=now_ms(), subject=who))
        deadline = time.monotonic() + 10
        while client.cache.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not client.cache.synced
        with service_process(env, tmp_path / "a.log", port=port_a):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not _answers(client, who, "dataExport"):
                time.sleep(0.02)
            assert client.wait_synced()
            # Served from the local cache: only a resumed watch can have updated this entry.
            snap = client.cache.fresh(who)
            assert snap is not None and snap.plan == "pro"
            assert client.can_use(who, "dataExport")
            assert client.get_limits(who).plan == "pro"
            client.close()
