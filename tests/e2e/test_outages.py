"""Outages: the service or PostgreSQL down → 503 + Retry-After and nothing acknowledged; back
up → the retried delivery applies exactly once. A gateway killed mid-stream loses nothing."""

from __future__ import annotations

import json
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SYNC_SECRET, db_query, event, kill_postgres, now_ms
from tests.support.service_process import free_port, service_process
from tests.support.stack import (
    HttpAnswer,
    gateway_process,
    new_signing_secret,
    post,
    signed_headers,
)

pytestmark = pytest.mark.e2e


def gateway_env(target: str, signing_secret: str) -> dict[str, str]:
    return {
        "ENTITLEMENTS_TARGET": target,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "CLERK_WEBHOOK_SIGNING_SECRET": signing_secret,
        "GATEWAY_FORWARD_TIMEOUT_SECONDS": "3",
    }


def deliver(port: int, body: bytes, secret: str, msg_id: str) -> HttpAnswer:
    """One attempt, signed afresh as Svix does on every retry."""
    try:
        return post(port, body, signed_headers(body, secret, msg_id), timeout=10)
    except OSError as exc:
        return HttpAnswer(0, str(exc).encode(), {})


def deliver_until_2xx(
    port: int, body: bytes, secret: str, msg_id: str, seconds: float = 30
) -> tuple[HttpAnswer, int]:
    """A Svix-like sender (shortened backoff): retry on anything but 2xx."""
    attempts = 0
    deadline = time.monotonic() + seconds
    while True:
        attempts += 1
        answer = deliver(port, body, secret, msg_id)
        if 200 <= answer.status < 300 or time.monotonic() > deadline:
            return answer, attempts
        time.sleep(0.2)


def stored_count(dsn: str, msg_id: str) -> int:
    return int(
        db_query(dsn, "SELECT count(*) AS n FROM deliveries WHERE event_id = $1", msg_id)[0]["n"]
    )


def payload_for(subject: str) -> bytes:
    return json.dumps(event("item_active_pro_month", at_ms=now_ms(), subject=subject)).encode()


def test_service_down_is_503_then_retry_applies_once(database_url: str, tmp_path: Path) -> None:
    secret = new_signing_secret()
    service_port = free_port()
    env = {"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    subject = f"user_svcdown_{secrets.token_hex(4)}"
    body, msg_id = payload_for(subject), "msg_" + secrets.token_hex(10)
    target = f"127.0.0.1:{service_port}"
    with gateway_process(gateway_env(target, secret), tmp_path / "gw.log") as (_, gw_port):
        with service_process(env, tmp_path / "svc.log", port=service_port):
            assert (
                deliver(
                    gw_port,
                    payload_for(f"user_warm_{secrets.token_hex(3)}"),
                    secret,
                    "msg_warm" + secrets.token_hex(6),
                ).status
                == 200
            )
        # The service is stopped now.
        answer = deliver(gw_port, body, secret, msg_id)
        assert answer.status == 503 and answer.headers.get("retry-after", "").isdigit()
        assert stored_count(database_url, msg_id) == 0
        with service_process(env, tmp_path / "svc.log", port=service_port):
            answer, _ = deliver_until_2xx(gw_port, body, secret, msg_id)
            assert answer.status == 200 and answer.json() == {"outcome": "APPLIED"}
            again = deliver(gw_port, body, secret, msg_id)
            assert again.json() == {"outcome": "DUPLICATE"}
    assert stored_count(database_url, msg_id) == 1
    changes = db_query(
        database_url, "SELECT count(*) AS n FROM plan_changes WHERE subject = $1", subject
    )
    assert changes[0]["n"] == 1


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL of this test's own (pgserver), so it can be killed -9 and restarted."""
    import pgserver

    with tempfile.TemporaryDirectory(prefix="ent-outage-pg-") as tmp:
        server = pgserver.get_server(Path(tmp), cleanup_mode="stop")
        try:
            yield server
        finally:
            server.cleanup()


def test_postgres_killed_is_503_then_retry_applies_once(own_postgres: Any, tmp_path: Path) -> None:
    dsn = own_postgres.get_uri()
    secret = new_signing_secret()
    env = {"DATABASE_URL": dsn, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    subject = f"user_pgdown_{secrets.token_hex(4)}"
    body, msg_id = payload_for(subject), "msg_" + secrets.token_hex(10)
    with service_process(env, tmp_path / "svc.log") as (_, target):  # noqa: SIM117
        with gateway_process(gateway_env(target, secret), tmp_path / "gw.log") as (_, gw_port):
            kill_postgres(own_postgres)
            answer = deliver(gw_port, body, secret, msg_id)
            assert answer.status == 503 and answer.headers.get("retry-after", "").isdigit()
            own_postgres.ensure_postgres_running()
            answer, attempts = deliver_until_2xx(gw_port, body, secret, msg_id)
            assert answer.status == 200 and answer.json() == {"outcome": "APPLIED"}
            assert attempts >= 1
            assert deliver(gw_port, body, secret, msg_id).json() == {"outcome": "DUPLICATE"}
    assert stored_count(dsn, msg_id) == 1
    assert (
        db_query(dsn, "SELECT plan FROM subjects WHERE subject = $1", subject)[0]["plan"] == "pro"
    )


def test_gateway_killed_mid_stream_loses_nothing(database_url: str, tmp_path: Path) -> None:
    secret = new_signing_secret()
    env = {"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    tag = secrets.token_hex(3)
    subjects = [f"user_stream_{tag}_{i}" for i in range(60)]
    msg_ids = [f"msg_stream_{tag}_{i}" for i in range(60)]
    gw_port = free_port()
    sent = threading.Event()
    results: list[int] = []

    with service_process(env, tmp_path / "svc.log") as (_, target):
        genv = gateway_env(target, secret)

        def sender() -> None:
            for i, (subject, msg_id) in enumerate(zip(subjects, msg_ids, strict=True)):
                if i == 15:
                    sent.set()
                answer, _ = deliver_until_2xx(gw_port, payload_for(subject), secret, msg_id, 60)
                results.append(answer.status)

        with gateway_process(genv, tmp_path / "gw.log", port=gw_port) as (gw, _):
            thread = threading.Thread(target=sender)
            thread.start()
            assert sent.wait(30)
            gw.send_signal(signal.SIGKILL)
            gw.wait()
        time.sleep(0.5)
        with gateway_process(genv, tmp_path / "gw.log", port=gw_port):
            thread.join(90)
            assert not thread.is_alive()
    assert results == [200] * 60
    rows = db_query(
        database_url,
        "SELECT count(*) AS n FROM deliveries WHERE event_id = ANY($1::text[])",
        msg_ids,
    )
    assert rows[0]["n"] == 60
    plans = db_query(
        database_url, "SELECT plan FROM subjects WHERE subject = ANY($1::text[])", subjects
    )
    assert [r["plan"] for r in plans] == ["pro"] * 60
