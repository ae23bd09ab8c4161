"""Outbound change notifications (SPEC §10.4) end to end: a real service process and gateway
on a fresh PostgreSQL database, changes made through svix-signed Clerk webhooks and the sync
API, and real aiohttp receivers checking what arrives with the `svix` library."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from svix.webhooks import Webhook

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from tests.support import SYNC_SECRET, db_query, event, fresh_database, now_ms
from tests.support.receiver import Received, Receiver, running_receiver
from tests.support.service_process import SCRIPTS, free_port, service_process
from tests.support.stack import new_signing_secret, running_stack

AUTH = (("authorization", f"Bearer {SYNC_SECRET}"),)


@pytest.fixture
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    with fresh_database(pg_admin_dsn) as url:
        yield url


def notify_env(urls: list[str], secrets: list[str], **extra: str) -> dict[str, str]:
    return {
        "ENTITLEMENTS_NOTIFY_URL": ", ".join(urls),
        "ENTITLEMENTS_NOTIFY_SECRET": " ".join(secrets),
        "ENTITLEMENTS_NOTIFY_MAX_BACKOFF_SECONDS": "1",
        "ENTITLEMENTS_NOTIFY_POLL_SECONDS": "0.2",
        "ENTITLEMENTS_NOTIFY_TIMEOUT_SECONDS": "3",
        **extra,
    }


def set_limit(target: str, subject: str, value: int, expires_at: datetime | None = None) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = sync_grpc.BillingSyncServiceStub(channel)
        request = sync_pb.SetOverrideRequest(
            subject=subject, limit="maxGoals", value=value, reason="notification test"
        )
        if expires_at is not None:
            stamp = Timestamp()
            stamp.FromDatetime(expires_at)
            request.expires_at.CopyFrom(stamp)
        version: int = stub.SetOverride(request, metadata=AUTH, timeout=10).version
        return version


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "entitlements"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": dsn},
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
        return text


def metric(port: int, labels: str) -> float:
    """entitlements_notification_attempts_total{<labels>} on the service's /metrics."""
    name = "entitlements_notification_attempts_total{" + labels + "}"
    lines = scrape(port).splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def verify(received: Received, secret: str) -> None:
    """The signature verifies with the svix library (raises otherwise)."""
    Webhook(secret).verify(received.body, received.headers)


def versions_ascend(receiver: Receiver) -> None:
    by_subject: dict[str, list[int]] = {}
    for r in receiver.accepted():
        by_subject.setdefault(r.data["subject"], []).append(r.data["version"])
    for subject, versions in by_subject.items():
        distinct = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
        assert distinct == sorted(set(versions)), (subject, versions)


def test_signed_in_order_and_all_delivered_after_an_outage(dsn: str, tmp_path: Path) -> None:
    old, new = new_signing_secret(), new_signing_secret()
    with running_receiver() as receiver:
        receiver.status = 503  # down from the start
        metrics_port = free_port()
        env = notify_env([receiver.url], [new, old])
        env["ENTITLEMENTS_METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
        with running_stack(dsn, tmp_path, env) as stack:
            answer = stack.send(event("item_active_pro_month", at_ms=now_ms(), subject="user_n1"))
            assert answer.status == 200, answer.body
            last = 0
            for value in range(1, 6):
                last = set_limit(stack.service_target, "user_n2", value)
            receiver.wait_for(lambda: len(receiver.requests) >= 3)
            time.sleep(2)  # retried (capped backoff), nothing accepted while down
            assert not receiver.accepted()
            refused_ids = {r.message_id for r in receiver.requests}
            receiver.status = 200
            receiver.wait_for(
                lambda: (
                    (receiver.latest("user_n2") or {}).get("version") == last
                    and (receiver.latest("user_n1") or {}).get("plan") == "pro"
                )
            )
            receiver.wait_for(lambda: metric(metrics_port, 'outcome="delivered"') >= 2)
            assert metric(metrics_port, 'outcome="retry"') >= 3
            assert "entitlements_notification_oldest_pending_seconds" in scrape(metrics_port)
        accepted = receiver.accepted()
        for r in accepted:
            verify(r, old)
            verify(r, new)
            assert r.headers["content-type"] == "application/json"
            assert set(r.data) == {
                "subject",
                "plan",
                "features",
                "limits",
                "version",
                "valid_until",
            }
        # Retries of one change carry one id: every refused id was delivered later.
        assert refused_ids <= {r.message_id for r in accepted}
        versions_ascend(receiver)
        latest = receiver.latest("user_n2")
        assert latest is not None and latest["limits"]["maxGoals"] == {
            "value": 5,
            "unlimited": False,
        }
        ids = [r.message_id for r in accepted]
        bodies = {r.message_id: r.body for r in accepted}
        assert all(bodies[i] == r.body for i, r in zip(ids, accepted, strict=True))


def test_a_change_by_time_alone_is_notified(dsn: str, tmp_path: Path) -> None:
    secret = new_signing_secret()
    with running_receiver() as receiver:
        with running_stack(dsn, tmp_path, notify_env([receiver.url], [secret])) as stack:
            expires = datetime.now(UTC) + timedelta(seconds=2)
            version = set_limit(stack.service_target, "user_t1", 42, expires)
            receiver.wait_for(lambda: receiver.latest("user_t1") is not None)
            first = receiver.latest("user_t1")
            assert first is not None and first["limits"]["maxGoals"]["value"] == 42
            assert first["valid_until"] is not None
            receiver.wait_for(
                lambda: (
                    (receiver.latest("user_t1") or {}).get("limits", {}).get("maxGoals")
                    != {"value": 42, "unlimited": False}
                ),
                timeout=15,
            )
        after = receiver.latest("user_t1")
        assert after is not None and after["version"] == version  # nothing but time changed
        assert after["limits"]["maxGoals"]["value"] == 3 and after["valid_until"] is None
        for r in receiver.accepted():
            verify(r, secret)


def test_kill_9_mid_delivery_loses_nothing(dsn: str, tmp_path: Path) -> None:
    secret = new_signing_secret()
    subjects = [f"user_k{i}" for i in range(12)]
    with running_receiver() as receiver:
        receiver.delay_seconds = 1.0  # deliveries are in flight when the service dies
        env = {
            "DATABASE_URL": dsn,
            "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
            **notify_env([receiver.url], [secret], ENTITLEMENTS_NOTIFY_CONCURRENCY="2"),
        }
        port = free_port()
        versions: dict[str, int] = {}
        with service_process(env, tmp_path / "service.log", port) as (proc, target):
            for subject in subjects:
                versions[subject] = set_limit(target, subject, 7)
            receiver.wait_for(lambda: len(receiver.requests) >= 1)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        sent_before = len(receiver.requests)
        assert sent_before < len(subjects)
        receiver.delay_seconds = 0.0
        with service_process(env, tmp_path / "service.log", port):
            receiver.wait_for(
                lambda: all(
                    (receiver.latest(s) or {}).get("version") == versions[s] for s in subjects
                ),
                timeout=40,
            )
    for r in receiver.accepted():
        verify(r, secret)


def test_a_slow_endpoint_does_not_delay_another(dsn: str, tmp_path: Path) -> None:
    secret = new_signing_secret()
    with running_receiver() as slow, running_receiver() as fast:
        slow.delay_seconds = 6.0  # answers each request only after 6 s
        env = notify_env([slow.url, fast.url], [secret], ENTITLEMENTS_NOTIFY_TIMEOUT_SECONDS="10")
        with running_stack(dsn, tmp_path, env) as stack:
            for i in range(10):
                set_limit(stack.service_target, f"user_s{i}", i + 1)
            fast.wait_for(lambda: len({r.data["subject"] for r in fast.accepted()}) == 10, 20)
            # All of it reached the fast endpoint before the slow one answered anything.
            assert not slow.requests
            slow.wait_for(lambda: len({r.data["subject"] for r in slow.accepted()}) == 10, 30)
        assert {r.message_id for r in fast.accepted()} == {r.message_id for r in slow.accepted()}


def test_410_disables_the_endpoint(dsn: str, tmp_path: Path) -> None:
    secret = new_signing_secret()
    with running_receiver() as receiver:
        receiver.status = 410
        with running_stack(dsn, tmp_path, notify_env([receiver.url], [secret])) as stack:
            set_limit(stack.service_target, "user_g1", 1)
            receiver.wait_for(lambda: len(receiver.requests) >= 1)
            set_limit(stack.service_target, "user_g2", 2)
            time.sleep(2)
            assert len(receiver.requests) == 1  # nothing more after 410 Gone
            rows = db_query(dsn, "SELECT disabled_reason FROM notify_endpoints")
            assert [r["disabled_reason"] for r in rows] == ["answered 410 Gone"]
            listed = cli(dsn, "notifications", "--json")
            assert listed.returncode == 0, listed.stderr
            found = json.loads(listed.stdout)["notifications"]
            assert {"endpoint": receiver.url} in [{"endpoint": n["endpoint"]} for n in found]
            assert any(n.get("disabled_at") for n in found)
            # Enabled again, it gets what queued meanwhile; a re-sent one comes again, same id.
            receiver.status = 200
            assert cli(dsn, "notifications", "enable", receiver.url).returncode == 0
            receiver.wait_for(
                lambda: {"user_g1"} <= {r.data["subject"] for r in receiver.accepted()}
            )
            delivered = [
                n
                for n in json.loads(cli(dsn, "notifications", "--json").stdout)["notifications"]
                if n.get("status") == "delivered"
            ]
            assert delivered
            again = cli(dsn, "notifications", "resend", str(delivered[0]["id"]))
            assert again.returncode == 0, again.stderr
            receiver.wait_for(
                lambda: (
                    [r.message_id for r in receiver.accepted()].count(delivered[0]["message_id"])
                    == 2
                )
            )
            missing = cli(dsn, "notifications", "resend", "999999")
            assert missing.returncode == 2 and "no notification 999999" in missing.stderr


def test_the_notifier_as_a_process_of_its_own(dsn: str, tmp_path: Path) -> None:
    """`entitlements-service notify` beside a replica that notifies nothing: it is woken by
    the replica's commits (NOTIFY), signs and sends every change in order, and a kill -9 of
    it mid-delivery loses nothing (a new one sends the rest)."""
    secret = new_signing_secret()
    subjects = [f"user_p{i}" for i in range(8)]
    notifier_env = {
        **os.environ,
        "DATABASE_URL": dsn,
        **notify_env(["http://unset"], [secret], ENTITLEMENTS_NOTIFY_CONCURRENCY="2"),
    }
    service_env = {"DATABASE_URL": dsn, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    log_path = tmp_path / "notifier.log"

    def notifier(url: str) -> subprocess.Popen[bytes]:
        env = {**notifier_env, "ENTITLEMENTS_NOTIFY_URL": url}
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [str(SCRIPTS / "entitlements-service"), "notify"], env=env, stdout=log, stderr=log
            )

    with (
        running_receiver() as receiver,
        service_process(service_env, tmp_path / "service.log") as (_, target),
    ):
        first = notifier(receiver.url)
        try:
            receiver.wait_for(lambda: "following the change log" in log_path.read_text())
            versions = {s: set_limit(target, s, 9) for s in subjects[:2]}
            receiver.wait_for(
                lambda: all(
                    (receiver.latest(s) or {}).get("version") == versions[s] for s in subjects[:2]
                )
            )
            receiver.delay_seconds = 1.0  # in flight when the notifier dies
            versions |= {s: set_limit(target, s, 10) for s in subjects}
            receiver.wait_for(lambda: len(receiver.requests) >= 3)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        receiver.delay_seconds = 0.0
        second = notifier(receiver.url)
        try:
            receiver.wait_for(
                lambda: all(
                    (receiver.latest(s) or {}).get("version") == versions[s] for s in subjects
                ),
                timeout=60,
            )
        finally:
            second.terminate()
            assert second.wait(20) == 0
    versions_ascend(receiver)
    for r in receiver.accepted():
        verify(r, secret)
    service_log = (tmp_path / "service.log").read_text()
    assert "notifying" not in service_log  # the replica itself sent nothing
