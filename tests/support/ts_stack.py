"""`python -m tests.support.ts_stack [--tls]`: a real service for the TypeScript client's tests
(clients/typescript/test), which spawn it.

It creates a fresh database (the machine's PostgreSQL, else an embedded one), starts
`entitlements-service` on free ports with ENTITLEMENTS_HTTP_LISTEN and a read token, puts one
subject on a paid plan (a grant, through BillingSyncService), and prints one JSON line:
`{"grpc": "http://127.0.0.1:…", "http": "http://127.0.0.1:…", "token": …, "paid": …, "free": …}`.
With `--tls` the gRPC port serves mutual TLS instead (certificates made here, their paths in
the line under "tls"; no HTTP listener: the service does not serve TLS there).

Then it reads commands from stdin, one a line, each answered `ok`: `grant SUBJECT` (put SUBJECT
on pro), `pause` / `resume` (SIGSTOP / SIGCONT the service: its streams stop, sockets stay
open), `wipe` (stop the service, drop and recreate its database, start it again on the same
ports: a new change log). Everything stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from tests.support import ADMIN_DSN, SYNC_SECRET, admin_reachable, fresh_database
from tests.support.service_process import SCRIPTS, free_port, service_process
from tests.support.tls_material import TlsFiles, make_tls_files

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


def _channel(target: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.client_key.read_bytes(),
        certificate_chain=tls.client_cert.read_bytes(),
    )
    return grpc.secure_channel(target, credentials)


def grant(target: str, subject: str, plan: str = "pro", tls: TlsFiles | None = None) -> None:
    expires = Timestamp()
    expires.FromDatetime(datetime.now(UTC) + timedelta(days=GRANT_DAYS))
    with _channel(target, tls) as channel:
        stub = sync_grpc.BillingSyncServiceStub(channel)
        stub.GrantPlan(
            sync_pb.GrantPlanRequest(
                subject=subject, plan=plan, reason="ts client test", expires_at=expires
            ),
            metadata=(("authorization", f"Bearer {SYNC_SECRET}"),),
            timeout=10,
        )


def service_env(dsn: str, http_port: int | None, tls: TlsFiles | None = None) -> dict[str, str]:
    """A service with the read token on and HTTP (Connect) on `http_port`, or mutual TLS."""
    env = {
        "DATABASE_URL": dsn,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_READ_TOKEN": READ_TOKEN,
        # a port of its own, not make run's 9464: `make test-ts` runs without tests/conftest.py
        "ENTITLEMENTS_METRICS_LISTEN": "127.0.0.1:0",
    }
    if http_port is not None:
        env["ENTITLEMENTS_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
    if tls is not None:
        env |= {
            "ENTITLEMENTS_TLS_CERT": str(tls.server_cert),
            "ENTITLEMENTS_TLS_KEY": str(tls.server_key),
            "ENTITLEMENTS_TLS_CLIENT_CA": str(tls.ca),
        }
    return env


@contextmanager
def tls_service(env: dict[str, str], log_path: Path, tls: TlsFiles) -> Iterator[str]:
    """service_process, for a TLS port (its health is asked over mutual TLS)."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(SCRIPTS / "entitlements-service")],
            env={**os.environ, **env, "ENTITLEMENTS_LISTEN": target},
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        with _channel(target, tls) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # typeshed stub lacks the methods
            while True:
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the TLS service did not start")
                time.sleep(0.1)
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _recreate(admin: str, dsn: str) -> None:
    name = dsn.partition("?")[0].rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class Plain:
    """The plaintext service (gRPC and HTTP), restartable on the same ports."""

    def __init__(self, admin: str, dsn: str, tmp: Path) -> None:
        self.admin, self.dsn, self.tmp = admin, dsn, tmp
        self.port, self.http_port = free_port(), free_port()
        self.env = service_env(dsn, self.http_port)
        self._stack = ExitStack()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        log = self.tmp / "service.log"
        try:
            self.proc, target = self._stack.enter_context(service_process(self.env, log, self.port))
        except Exception:
            sys.stderr.write(log.read_text(errors="replace") if log.exists() else "")
            raise
        return target

    def wipe(self) -> None:
        self._stack.close()
        asyncio.run(_recreate(self.admin, self.dsn))
        self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused one must see its SIGTERM
        self._stack.close()


def serve(commands: dict[str, object], target: str, tls: TlsFiles | None) -> None:
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "grant" and argument:
            grant(target, argument, tls=tls)
        elif command in commands:
            action = commands[command]
            assert callable(action)
            action()
        elif command:
            print(f"unknown command {command!r}", flush=True)
            continue
        else:
            continue
        print("ok", flush=True)


def main(argv: list[str]) -> int:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ts-stack-")))
        admin = stack.enter_context(admin_dsn(tmp))
        dsn = stack.enter_context(fresh_database(admin))
        info: dict[str, object] = {"token": READ_TOKEN, "paid": PAID, "free": FREE}
        if "--tls" in argv:
            tls = make_tls_files(tmp)
            target = stack.enter_context(
                tls_service(service_env(dsn, None, tls), tmp / "service.log", tls)
            )
            grant(target, PAID, tls=tls)
            info |= {
                "grpc": f"https://{target}",
                "grpcTarget": target,
                "tls": {
                    "ca": str(tls.ca),
                    "cert": str(tls.client_cert),
                    "key": str(tls.client_key),
                    "rogueCert": str(tls.rogue_client_cert),
                    "rogueKey": str(tls.rogue_client_key),
                },
            }
            print(json.dumps(info), flush=True)
            serve({}, target, tls)
            return 0
        plain = Plain(admin, dsn, tmp)
        stack.callback(plain.close)
        target = plain.start()
        grant(target, PAID)
        info |= {
            "grpc": f"http://{target}",
            "grpcTarget": target,
            "http": f"http://127.0.0.1:{plain.http_port}",
        }
        print(json.dumps(info), flush=True)

        def pause() -> None:
            assert plain.proc is not None
            os.kill(plain.proc.pid, signal.SIGSTOP)

        def resume() -> None:
            assert plain.proc is not None
            os.kill(plain.proc.pid, signal.SIGCONT)

        serve({"pause": pause, "resume": resume, "wipe": plain.wipe}, target, None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
