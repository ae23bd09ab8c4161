"""Chaos: ≥ 5 000 signed events over ≥ 500 subjects through a Svix-like sender (retries,
duplicates, shuffled order) while PostgreSQL, the service and the gateway are killed (-9) and
restarted at random moments. The end state must equal the in-order oracle's, every delivery
must be stored exactly once, and nothing may be applied twice.

Meanwhile consumers spend a metered limit (SPEC §10.1) through the same faults, retrying each
call with its idempotency key until it is answered: every subject ends with exactly its limit
used, each allowed call counted once, none lost."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from service.config import load_catalog
from tests.support import SYNC_SECRET, db_query, kill_postgres, now_ms
from tests.support.oracle import expected_states
from tests.support.service_process import SCRIPTS, free_port, wait_serving
from tests.support.svix_sender import Message, SvixLikeSender

pytestmark = pytest.mark.chaos

SUBJECTS = int(os.environ.get("CHAOS_SUBJECTS", "500"))
EVENTS_PER_SUBJECT = int(os.environ.get("CHAOS_EVENTS_PER_SUBJECT", "10"))
SEED = int(os.environ.get("CHAOS_SEED", "20261127"))
DAY = 86_400_000
METER = "aiInsightsPerMonth"
METER_SUBJECTS = 20
CALLS_PER_METER_SUBJECT = 40  # twice the free plan's 20
STATUSES = ["active", "active", "canceled", "past_due", "ended", "upcoming", "incomplete"]
SLUGS = ["pro", "pro", "pro_yearly", "lifetime", "free_user", "pro_monthly"]


def generate(rng: random.Random, now: int) -> list[Message]:
    """Each subject's events in event-time order (kept well away from "now")."""
    messages = []
    for s in range(SUBJECTS):
        subject = f"user_chaos_{s}" if s % 5 else f"org_chaos_{s}"
        t = now - 20 * DAY + rng.randint(0, DAY)
        for e in range(EVENTS_PER_SUBJECT):
            t += rng.randint(1, 2 * 3600_000)
            if e == EVENTS_PER_SUBJECT - 1 and rng.random() < 0.05:
                kind = "organization" if subject.startswith("org_") else "user"
                body = {"type": f"{kind}.deleted", "timestamp": t, "data": {"id": subject}}
            else:
                status = rng.choice(STATUSES)
                payer_key = "organization_id" if subject.startswith("org_") else "user_id"
                body = {
                    "type": f"subscriptionItem.{status}",
                    "timestamp": t,
                    "object": "event",
                    "data": {
                        "id": f"subi_{subject}_{rng.randint(0, 1)}",
                        "status": status,
                        "plan": {"slug": rng.choice(SLUGS)},
                        "payer": {payer_key: subject, "email": "chaos@example.com"},
                        "period_end": rng.choice([t - DAY, now + 30 * DAY]),
                        "past_due_at": t if status == "past_due" else None,
                    },
                }
            messages.append(Message(f"msg_chaos_{s}_{e}", json.dumps(body).encode()))
    return messages


class Proc:
    """A console-script process that can be killed -9 and started again on the same port."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: Any) -> None:
        self.args, self.env, self.log, self.ready = args, env, log, ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, env={**os.environ, **self.env}, stdout=out, stderr=out
            )
        self.ready()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


class Consumers:
    """Spends the free limit of METER_SUBJECTS subjects, one unit per call, each call retried
    with the same idempotency key until the service answers it (as a client should)."""

    def __init__(self, target: str, seed: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.answers: dict[str, tuple[str, bool]] = {}  # key -> (subject, allowed)
        self.retries = 0
        self.stop = threading.Event()

    def run(self) -> None:
        calls = [
            (f"user_meter_{s}", f"k_{s}_{c}")
            for s in range(METER_SUBJECTS)
            for c in range(CALLS_PER_METER_SUBJECT)
        ]
        self.rng.shuffle(calls)
        with grpc.insecure_channel(self.target) as channel:
            stub = usage_grpc.UsageServiceStub(channel)
            for who, key in calls:
                while not self.stop.is_set():
                    try:
                        answer = stub.Consume(
                            usage_pb.ConsumeRequest(
                                subject=who, limit=METER, amount=1, idempotency_key=key
                            ),
                            timeout=5,
                        )
                    except grpc.RpcError:
                        self.retries += 1
                        time.sleep(self.rng.uniform(0.05, 0.3))
                        continue
                    self.answers[key] = (who, answer.allowed)
                    break
                time.sleep(self.rng.uniform(0.02, 0.15))  # spread over the faults


def test_chaos_ends_in_the_oracle_state(tmp_path: Path) -> None:
    import pgserver

    rng = random.Random(SEED)
    pg = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    dsn = pg.get_uri()
    signing_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    svc_target = f"127.0.0.1:{free_port()}"
    gw_port = free_port()
    service = Proc(
        [str(SCRIPTS / "entitlements-service"), "--log-level", "WARNING"],
        {
            "DATABASE_URL": dsn,
            "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
            "ENTITLEMENTS_LISTEN": svc_target,
        },
        tmp_path / "service.log",
        lambda: wait_serving(svc_target),
    )
    gateway = Proc(
        [str(SCRIPTS / "entitlements-gateway"), "--log-level", "WARNING"],
        {
            "ENTITLEMENTS_TARGET": svc_target,
            "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
            "CLERK_WEBHOOK_SIGNING_SECRET": signing_secret,
            "GATEWAY_LISTEN": f"127.0.0.1:{gw_port}",
            "GATEWAY_FORWARD_TIMEOUT_SECONDS": "5",
        },
        tmp_path / "gateway.log",
        lambda: wait_http(f"http://127.0.0.1:{gw_port}/healthz"),
    )
    now = now_ms()
    messages = generate(rng, now)
    expected = expected_states([m.body for m in messages], load_catalog(None), now)
    faults = {"postgres": 0, "service": 0, "gateway": 0}
    try:
        service.start()
        gateway.start()
        sender = SvixLikeSender(
            f"http://127.0.0.1:{gw_port}/api/webhooks/clerk-billing",
            signing_secret,
            senders=16,
            duplicate_rate=0.1,
            shuffle_window=50,
            seed=SEED,
        )
        done = threading.Event()
        started = time.monotonic()

        def run_sender() -> None:
            asyncio.run(sender.send_all(messages))
            done.set()

        thread = threading.Thread(target=run_sender)
        thread.start()
        consumers = Consumers(svc_target, SEED)
        consuming = threading.Thread(target=consumers.run)
        consuming.start()
        while not done.wait(rng.uniform(1.0, 3.0)):
            fault = rng.choice(list(faults))
            faults[fault] += 1
            if fault == "postgres":
                kill_postgres(pg)
                time.sleep(rng.uniform(0.1, 1.0))
                pg.ensure_postgres_running()
            else:
                proc = service if fault == "service" else gateway
                proc.kill9()
                time.sleep(rng.uniform(0.1, 1.0))
                proc.start()
        thread.join()
        consuming.join(timeout=120)
        consumers.stop.set()
        elapsed = time.monotonic() - started
        stats = sender.stats

        stored = db_query(dsn, "SELECT event_id, outcome FROM deliveries")
        ids = [r["event_id"] for r in stored]
        mismatches = []
        with grpc.insecure_channel(svc_target) as channel:
            stub = pb_grpc.EntitlementServiceStub(channel)
            for subject, want in expected.items():
                got = stub.GetEntitlements(pb.GetEntitlementsRequest(subject=subject), timeout=10)
                limits = {k: (v.value, v.unlimited) for k, v in got.limits.items()}
                if (got.plan, frozenset(got.features), limits) != (
                    want.plan,
                    want.features,
                    want.limits,
                ):
                    mismatches.append((subject, got.plan, want.plan))
            # The live state must also be what the stored log rebuilds to (in event-id order,
            # not the shuffled arrival order).
            sync = sync_grpc.BillingSyncServiceStub(channel)
            auth = (("authorization", f"Bearer {SYNC_SECRET}"),)
            usage_stub = usage_grpc.UsageServiceStub(channel)
            used = {
                f"user_meter_{s}": usage_stub.GetUsage(
                    usage_pb.GetUsageRequest(subject=f"user_meter_{s}"), timeout=10
                )
                .usage[0]
                .used
                for s in range(METER_SUBJECTS)
            }
            verify_started = time.monotonic()
            verified = list(sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=auth))[-1]
            verify_seconds = time.monotonic() - verify_started
        print(
            f"\nchaos: {len(messages)} events over {len(expected)} subjects in {elapsed:.1f} s; "
            f"faults injected {faults}; attempts {stats.attempts}, retries {stats.retries}, "
            f"duplicates sent {stats.duplicates_sent}, "
            f"statuses {dict(sorted(stats.statuses.items()))}; "
            f"stored {len(ids)} ({len(set(ids))} distinct); final mismatches {len(mismatches)}; "
            f"verify: {verified.subjects_checked} subjects, "
            f"{len(verified.differences)} differences in {verify_seconds:.1f} s; "
            f"consumption: {len(consumers.answers)} calls answered, {consumers.retries} retries"
        )
        assert not stats.failed, f"{len(stats.failed)} deliveries never got a 2xx"
        assert sum(faults.values()) >= 3, "too few faults injected to mean anything"
        assert len(ids) == len(set(ids)) == len(messages)  # every delivery stored exactly once
        assert all(r["outcome"] != "PENDING" for r in stored)
        assert mismatches == [], mismatches[:10]
        assert verified.finished and list(verified.differences) == []
        # Consumption through the same faults: every call answered, exactly the limit used
        # per subject, and the usage equals the allowed calls (none counted twice or lost).
        assert len(consumers.answers) == METER_SUBJECTS * CALLS_PER_METER_SUBJECT
        for who, total in used.items():
            allowed = sum(1 for s, ok in consumers.answers.values() if s == who and ok)
            assert (total, allowed) == (20, 20), (who, total, allowed)
        for log in (tmp_path / "service.log", tmp_path / "gateway.log"):
            text = log.read_text(errors="replace")
            assert SYNC_SECRET not in text and "chaos@example.com" not in text
    finally:
        gateway.stop()
        service.stop()
        pg.cleanup()
