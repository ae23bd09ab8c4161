"""Start `entitlements-service` as a real process on a free port and wait until it serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SCRIPTS = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # typeshed stub lacks the methods
        while time.monotonic() < deadline:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"service at {target} never became SERVING")


@contextmanager
def service_process(
    env: dict[str, str], log_path: Path, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = port or free_port()
    full_env = {**os.environ, **env, "ENTITLEMENTS_LISTEN": f"127.0.0.1:{port}"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(SCRIPTS / "entitlements-service")], env=full_env, stdout=log, stderr=log
        )
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target)
        yield proc, target
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
