"""`make run`: embedded PostgreSQL (unless DATABASE_URL is set), the service and the gateway,
together in the foreground, with development secrets generated when none are set.
Ctrl-C (or SIGTERM) stops all three cleanly."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.adapters.postgres.embedded import EmbeddedPostgres, start_embedded_postgres

BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("ENTITLEMENTS_DATA_DIR") or ".data")


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only, atomically: the secrets are never on disk
    with wider permissions, and a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:  # type: ignore[attr-defined]
                    return True
            except grpc.RpcError:
                time.sleep(0.2)
    return False


def main() -> int:
    env = dict(os.environ)
    generated = []
    if not env.get("BILLING_WEBHOOK_SYNC_SECRET"):
        env["BILLING_WEBHOOK_SYNC_SECRET"] = "dev_" + secrets.token_urlsafe(32)
        generated.append("BILLING_WEBHOOK_SYNC_SECRET")
    if not (env.get("CLERK_WEBHOOK_SIGNING_SECRET") or env.get("CLERK_WEBHOOK_SECRET")):
        key = base64.b64encode(secrets.token_bytes(24)).decode()
        env["CLERK_WEBHOOK_SIGNING_SECRET"] = f"whsec_{key}"
        generated.append("CLERK_WEBHOOK_SIGNING_SECRET")
    service_listen = env.setdefault("ENTITLEMENTS_LISTEN", "127.0.0.1:50051")
    env.setdefault("ENTITLEMENTS_TARGET", service_listen)
    gateway_listen = env.setdefault("GATEWAY_LISTEN", "127.0.0.1:8080")
    # EntitlementService over HTTP (Connect JSON/binary, gRPC-Web): curl and the TS client.
    http_listen = env.setdefault("ENTITLEMENTS_HTTP_LISTEN", "127.0.0.1:8081")
    gateway_url = f"http://{gateway_listen}/api/webhooks/clerk-billing"

    embedded: EmbeddedPostgres | None = None
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if not env.get("DATABASE_URL"):
            print(f"starting embedded PostgreSQL under {DATA}/pg …", flush=True)
            embedded = start_embedded_postgres(DATA)
            env["DATABASE_URL"] = embedded.uri
        service = subprocess.Popen([str(BIN / "entitlements-service")], env=env)
        children.append(service)
        if not wait_serving(service_listen, service):
            print("the service did not start; see its log above", file=sys.stderr)
            return 1
        children.append(subprocess.Popen([str(BIN / "entitlements-gateway")], env=env))
        DATA.mkdir(parents=True, exist_ok=True)
        dev_env = DATA / "dev.env"
        write_private(
            dev_env,
            "".join(
                f"{k}={env[k]}\n"
                for k in (
                    "BILLING_WEBHOOK_SYNC_SECRET",
                    "CLERK_WEBHOOK_SIGNING_SECRET",
                    "ENTITLEMENTS_TARGET",
                )
                if env.get(k)
            )
            + f"GATEWAY_URL={gateway_url}\n",
        )
        print(
            "\n"
            f"  service  grpc://{service_listen}   grpcurl -plaintext {service_listen} list\n"
            f"  http     http://{http_listen}/entitlements.v1.EntitlementService/CanUse"
            "   (Connect: curl -H 'content-type: application/json' -d '{...}')\n"
            f"  gateway  {gateway_url}\n"
            f"           http://{gateway_listen}/readyz   http://{gateway_listen}/metrics\n"
            f"  database {'DATABASE_URL' if embedded is None else f'embedded under {DATA}/pg'}\n"
            + (
                f"  development secrets generated for this run ({', '.join(generated)}),\n"
                f"  written to {dev_env}:\n" + "".join(f"    {k}={env[k]}\n" for k in generated)
                if generated
                else ""
            )
            + "\n  try it:  make demo     (sends a signed subscriptionItem.active for user_demo)\n",
            flush=True,
        )
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.stop()
        print("stopped: gateway, service" + (", embedded PostgreSQL" if embedded else ""))


if __name__ == "__main__":
    sys.exit(main())
