"""`make run`: embedded PostgreSQL (unless DATABASE_URL is set), the service and the gateway,
together in the foreground, with development secrets generated when none are set.
Ctrl-C, SIGTERM or SIGHUP stops all three cleanly.

One `make run` per data directory: a lock file there (`run.lock`, held while it runs) makes a
second one refuse (exit 4) before it touches anything; so does a port already in use. The
secrets are kept in `dev.env` in the data directory: written once, reused by later runs, never
overwritten (delete it for new ones)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.adapters.postgres.embedded import EmbeddedPostgres, start_embedded_postgres
from service.config import DEFAULT_METRICS_LISTEN
from service.entrypoints.launch import EXIT_PORT_IN_USE, port_in_use

BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("ENTITLEMENTS_DATA_DIR") or ".data")


def write_new_private(path: Path, text: str) -> bool:
    """Write `path` readable by its owner only (the secrets are never on disk with wider
    permissions, and a reader never sees half a file), but never replace an existing file:
    False when one is there."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.link(tmp, path)  # atomic, and fails if `path` exists
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and value.strip():
            found[key.strip()] = value.strip()
    return found


def lock_data_dir(data: Path) -> int | None:
    """Hold `data/run.lock` for the life of this process (the kernel drops it however the
    process ends, so a killed run never leaves it behind); None when another run holds it."""
    data.mkdir(parents=True, exist_ok=True)
    fd = os.open(data / "run.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        print(
            f"make run: {data} is in use by another `make run` (pid {holder}); stop that one first",
            file=sys.stderr,
        )
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


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


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """Until `url` answers 200 (the gateway's /healthz), so `make demo` right after the banner
    finds it listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    return False


def main() -> int:
    if lock_data_dir(DATA) is None:
        return EXIT_PORT_IN_USE
    env = dict(os.environ)
    dev_env = DATA / "dev.env"
    earlier = read_env_file(dev_env)
    for key in ("BILLING_WEBHOOK_SYNC_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET"):
        if (
            key in earlier
            and not env.get(key)
            and not (key.startswith("CLERK") and env.get("CLERK_WEBHOOK_SECRET"))
        ):
            env[key] = earlier[key]  # the secrets of an earlier run: the CLI keeps working
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
    metrics_listen = env.setdefault("ENTITLEMENTS_METRICS_LISTEN", DEFAULT_METRICS_LISTEN)
    gateway_url = f"http://{gateway_listen}/api/webhooks/clerk-billing"
    for listen in (service_listen, gateway_listen, http_listen, metrics_listen):
        if port_in_use(listen):
            print(f"make run: {listen} is already in use", file=sys.stderr)
            return EXIT_PORT_IN_USE

    embedded: EmbeddedPostgres | None = None
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        if not env.get("DATABASE_URL"):
            print(f"starting embedded PostgreSQL under {DATA}/pg …", flush=True)
            embedded = start_embedded_postgres(DATA)
            env["DATABASE_URL"] = embedded.uri
        service = subprocess.Popen([str(BIN / "entitlements-service")], env=env)
        children.append(service)
        if not wait_serving(service_listen, service):
            print("the service did not start; see its log above", file=sys.stderr)
            return service.poll() or 1  # its own exit code (4: port in use, …)
        gateway = subprocess.Popen([str(BIN / "entitlements-gateway")], env=env)
        children.append(gateway)
        if not wait_http_ok(f"http://{gateway_listen}/healthz", gateway):
            print("the gateway did not start; see its log above", file=sys.stderr)
            return gateway.poll() or 1
        wrote = write_new_private(
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
        if not wrote:
            current = {
                "BILLING_WEBHOOK_SYNC_SECRET": env["BILLING_WEBHOOK_SYNC_SECRET"],
                "ENTITLEMENTS_TARGET": env["ENTITLEMENTS_TARGET"],
                "GATEWAY_URL": gateway_url,
            }
            differ = sorted(k for k, v in current.items() if earlier.get(k) != v)
            if differ:
                print(
                    f"note: {dev_env} (kept from an earlier run, never overwritten) differs from "
                    f"this run in {', '.join(differ)}; delete it to have it written anew",
                    file=sys.stderr,
                )
        print(
            "\n"
            f"  service  grpc://{service_listen}   grpcurl -plaintext {service_listen} list\n"
            f"  http     http://{http_listen}/entitlements.v1.EntitlementService/CanUse"
            "   (Connect: curl -H 'content-type: application/json' -d '{...}')\n"
            f"  gateway  {gateway_url}\n"
            f"           http://{gateway_listen}/readyz   http://{gateway_listen}/metrics\n"
            f"  metrics  http://{metrics_listen}/metrics   (the service's Prometheus series)\n"
            f"  database {'DATABASE_URL' if embedded is None else f'embedded under {DATA}/pg'}\n"
            + (
                f"  development secrets generated for this run ({', '.join(generated)}),\n"
                f"  written to {dev_env}:\n" + "".join(f"    {k}={env[k]}\n" for k in generated)
                if generated
                else f"  development secrets: from {dev_env}\n"
                if earlier
                else ""
            )
            + "\n  try it:  make demo     (sends a signed subscriptionItem.active for user_demo)\n",
            flush=True,
        )
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        if stopping:
            return 0
        name = "service" if service.poll() is not None else "gateway"
        code = next(c.returncode for c in children if c.returncode is not None)
        print(f"make run: the {name} exited (code {code}); stopping", file=sys.stderr)
        return code or 1
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
