"""`python -m tests.support.ts_stack`: a real service for the TypeScript client's tests
(clients/typescript/test), which spawn it.

It creates a fresh database (the machine's PostgreSQL, else an embedded one), starts
`entitlements-service` on free ports with ENTITLEMENTS_HTTP_LISTEN and a read token, puts one
subject on a paid plan (a grant, through BillingSyncService), and prints one JSON line:
`{"grpc": "http://127.0.0.1:…", "http": "http://127.0.0.1:…", "token": …, "paid": …, "free": …}`.
Then it reads commands from stdin, one a line (`grant SUBJECT`: put SUBJECT on pro, answered
`ok`), and stops everything when stdin closes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from tests.support import ADMIN_DSN, SYNC_SECRET, admin_reachable, fresh_database
from tests.support.service_process import free_port, service_process

READ_TOKEN = "ts-client-read-token-0123456789"
PAID = "user_ts_paid"
FREE = "user_ts_free"
# Grants in these tests end a day after the stack starts (so valid_until is set).
GRANT_DAYS = 1


@contextmanager
def admin_dsn(tmp: Path) -> Iterator[str]:
    if admin_reachable(ADMIN_DSN):
        yield ADMIN_DSN
        return
    import pgserver

    server = pgserver.get_server(tmp / "pg", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def grant(target: str, subject: str, plan: str = "pro") -> None:
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC) + timedelta(days=GRANT_DAYS))
    with grpc.insecure_channel(target) as channel:
        stub = sync_grpc.BillingSyncServiceStub(channel)
        stub.GrantPlan(
            sync_pb.GrantPlanRequest(
                subject=subject, plan=plan, reason="ts client test", expires_at=expires
            ),
            metadata=(("authorization", f"Bearer {SYNC_SECRET}"),),
            timeout=10,
        )


def service_env(dsn: str, http_port: int) -> dict[str, str]:
    """A service with the read token on and HTTP (Connect) on `http_port`."""
    return {
        "DATABASE_URL": dsn,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_READ_TOKEN": READ_TOKEN,
        "ENTITLEMENTS_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        # a port of its own, not make run's 9464: `make test-ts` runs without tests/conftest.py
        "ENTITLEMENTS_METRICS_LISTEN": "127.0.0.1:0",
    }


def main() -> int:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ts-stack-")))
        dsn = stack.enter_context(fresh_database(stack.enter_context(admin_dsn(tmp))))
        http_port = free_port()
        env = service_env(dsn, http_port)
        log = tmp / "service.log"
        try:
            _, target = stack.enter_context(service_process(env, log))
        except Exception:
            sys.stderr.write(log.read_text(errors="replace") if log.exists() else "")
            raise
        grant(target, PAID)
        ready = {
            "grpc": f"http://{target}",
            "grpcTarget": target,
            "http": f"http://127.0.0.1:{http_port}",
            "token": READ_TOKEN,
            "paid": PAID,
            "free": FREE,
        }
        print(json.dumps(ready), flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "grant" and argument:
                grant(target, argument)
                print("ok", flush=True)
            elif command:
                print(f"unknown command {command!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
