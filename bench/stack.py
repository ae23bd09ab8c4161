"""What the benchmarks start: a fresh database, service processes on free ports, and the wait
until they serve (shared by bench/run.py and bench/compare.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
SYNC_SECRET = "bench-sync-secret-" + secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return  # the no-op floor has no health service: it answers, so it is up
            time.sleep(0.1)
    raise TimeoutError(target)


@contextmanager
def process(
    args: list[str], env: dict[str, str], name: str, logs: Path
) -> Iterator[psutil.Process]:
    with open(logs / f"{name}.log", "wb") as out:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=out)
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def service(
    dsn: str, logs: Path, name: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[Any, str]:
    """A service as configured by default (metrics on, on a port of its own; tracing off)."""
    port = free_port()
    env = {
        "DATABASE_URL": dsn,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_LISTEN": f"127.0.0.1:{port}",
        "ENTITLEMENTS_CACHE_MAX_SUBJECTS": "200000",
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        **(env or {}),
    }
    return process(
        [str(BIN / "entitlements-service"), "--log-level", "WARNING", *extra], env, name, logs
    ), f"127.0.0.1:{port}"


@contextmanager
def database() -> Iterator[str]:
    admin = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"ent_bench_{secrets.token_hex(4)}"

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError):
        import pgserver

        with tempfile.TemporaryDirectory(prefix="ent-bench-pg-") as tmp:
            server = pgserver.get_server(Path(tmp), cleanup_mode="stop")
            try:
                yield server.get_uri()
            finally:
                server.cleanup()
        return
    head, _, _ = admin.partition("?")[0].rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
