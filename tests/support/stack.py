"""Real processes for the end-to-end tests: service + gateway on free ports, a Svix signer,
and a raw HTTP client that can send what a browser never would."""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from svix.webhooks import Webhook

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from tests.support import SYNC_SECRET
from tests.support.service_process import SCRIPTS, free_port, service_process

WEBHOOK_PATH = "/api/webhooks/clerk-billing"


def new_signing_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed_headers(
    body: bytes | str,
    secret: str,
    msg_id: str | None = None,
    when: datetime | None = None,
) -> dict[str, str]:
    """The three Svix headers, signed by the real `svix` library."""
    msg_id = msg_id or "msg_" + secrets.token_hex(12)
    when = when or datetime.now(UTC)
    text = body.decode() if isinstance(body, bytes) else body
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, when, text),
    }


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def post(
    port: int,
    body: bytes,
    headers: Sequence[tuple[str, str]] | dict[str, str],
    path: str = WEBHOOK_PATH,
    method: str = "POST",
    timeout: float = 20,
) -> HttpAnswer:
    """One raw HTTP request (duplicate headers allowed), on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else headers
        has_length = False
        for name, value in items:
            conn.putheader(name, value)
            has_length |= name.lower() in ("content-length", "transfer-encoding")
        if not has_length:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body:
            conn.send(body)
        response = conn.getresponse()
        return HttpAnswer(
            response.status,
            response.read(),
            {k.lower(): v for k, v in response.getheaders()},
        )
    finally:
        conn.close()


def get(port: int, path: str) -> HttpAnswer:
    return post(port, b"", {}, path=path, method="GET")


@contextmanager
def gateway_process(
    env: dict[str, str], log_path: Path, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = port or free_port()
    full_env = {**os.environ, **env, "GATEWAY_LISTEN": f"127.0.0.1:{port}"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(SCRIPTS / "entitlements-gateway")], env=full_env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(port, "/healthz").status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"gateway did not start; see {log_path}")
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Stack:
    """A running service + gateway pair."""

    service_target: str
    gateway_port: int
    signing_secret: str
    database_url: str
    log_dir: Path

    def stub(self) -> pb_grpc.EntitlementServiceStub:
        return pb_grpc.EntitlementServiceStub(grpc.insecure_channel(self.service_target))

    def send(
        self,
        payload: dict[str, Any] | bytes,
        msg_id: str | None = None,
        when: datetime | None = None,
        secret: str | None = None,
    ) -> HttpAnswer:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = signed_headers(body, secret or self.signing_secret, msg_id, when)
        return post(self.gateway_port, body, headers)

    def plan(self, subject: str) -> str:
        with grpc.insecure_channel(self.service_target) as channel:
            stub = pb_grpc.EntitlementServiceStub(channel)
            r = stub.GetEntitlements(pb.GetEntitlementsRequest(subject=subject), timeout=10)
            return str(r.plan)

    def entitlements(self, subject: str) -> pb.GetEntitlementsResponse:
        with grpc.insecure_channel(self.service_target) as channel:
            stub = pb_grpc.EntitlementServiceStub(channel)
            r: pb.GetEntitlementsResponse = stub.GetEntitlements(
                pb.GetEntitlementsRequest(subject=subject), timeout=10
            )
            return r

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@contextmanager
def running_stack(
    database_url: str,
    log_dir: Path,
    service_extra: dict[str, str] | None = None,
    **gateway_env: str,
) -> Iterator[Stack]:
    signing_secret = new_signing_secret()
    service_env = {
        "DATABASE_URL": database_url,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        **(service_extra or {}),
    }
    with service_process(service_env, log_dir / "service.log") as (_, target):
        env = {
            "ENTITLEMENTS_TARGET": target,
            "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
            "CLERK_WEBHOOK_SIGNING_SECRET": signing_secret,
            **gateway_env,
        }
        with gateway_process(env, log_dir / "gateway.log") as (_, port):
            yield Stack(target, port, signing_secret, database_url, log_dir)


def stale(minutes: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)
