"""`entitlements-service` start-up as operators run it: the `migrate` command,
ENTITLEMENTS_MIGRATE_ON_START=false, and a port another process holds (exit 4, one line,
nothing migrated)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.adapters.postgres.migrate import bundled_migrations
from service.entrypoints.launch import EXIT_PORT_IN_USE, EXIT_SCHEMA_BEHIND
from tests.support import SYNC_SECRET, db_query, fresh_database
from tests.support.service_process import SCRIPTS, free_port, service_process

pytestmark = pytest.mark.e2e


def run_service(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "entitlements-service"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def migrated_versions(dsn: str) -> list[int] | None:
    """Versions in schema_migrations; None when the table does not exist (nothing ran)."""
    if not db_query(dsn, "SELECT to_regclass('schema_migrations') IS NOT NULL AS t")[0]["t"]:
        return None
    return [r["version"] for r in db_query(dsn, "SELECT version FROM schema_migrations ORDER BY 1")]


def test_migrate_applies_every_migration_then_changes_nothing(pg_admin_dsn: str) -> None:
    with fresh_database(pg_admin_dsn) as dsn:
        first = run_service("migrate", env={"DATABASE_URL": dsn})
        assert first.returncode == 0, first.stderr
        assert migrated_versions(dsn) == [m.version for m in bundled_migrations()]
        applied_at = db_query(dsn, "SELECT version, applied_at FROM schema_migrations")
        again = run_service("migrate", env={"DATABASE_URL": dsn})
        assert again.returncode == 0, again.stderr
        assert "already up to date" in again.stderr
        assert db_query(dsn, "SELECT version, applied_at FROM schema_migrations") == applied_at


def test_migrate_against_an_unreachable_database_exits_3() -> None:
    port = free_port()  # nothing listens there
    done = run_service("migrate", env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x"})
    assert done.returncode == 3, done.stderr


def test_a_replica_that_does_not_migrate_refuses_a_schema_behind_then_serves(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    env = {
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_MIGRATE_ON_START": "false",
    }
    with fresh_database(pg_admin_dsn) as dsn:
        env["DATABASE_URL"] = dsn
        refused = run_service(env={**env, "ENTITLEMENTS_LISTEN": f"127.0.0.1:{free_port()}"})
        assert refused.returncode == EXIT_SCHEMA_BEHIND, refused.stderr
        assert "entitlements-service migrate" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert migrated_versions(dsn) is None  # it changed nothing

        assert run_service("migrate", env={"DATABASE_URL": dsn}).returncode == 0
        with service_process(env, tmp_path / "replica.log") as (_proc, target):
            channel = grpc.insecure_channel(target)
            health: Any = health_pb2_grpc.HealthStub(channel)
            for name in ("", "liveness"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            channel.close()


@pytest.mark.parametrize(
    "variable", ["ENTITLEMENTS_LISTEN", "ENTITLEMENTS_HTTP_LISTEN", "ENTITLEMENTS_METRICS_LISTEN"]
)
def test_a_held_port_is_refused_with_one_line_before_any_migration(
    pg_admin_dsn: str, variable: str
) -> None:
    with socket.socket() as holder, fresh_database(pg_admin_dsn) as dsn:
        # Held *with* SO_REUSEPORT: a server that set it too would have shared the port.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        env = {
            "DATABASE_URL": dsn,
            "ENTITLEMENTS_LISTEN": f"127.0.0.1:{free_port()}",
            "ENTITLEMENTS_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            variable: listen,
        }
        done = run_service(env=env, timeout=30)
        assert done.returncode == EXIT_PORT_IN_USE
        assert done.stderr == f"entitlements-service: {listen} is already in use\n"
        assert migrated_versions(dsn) is None


def test_a_second_service_on_another_database_cannot_share_the_port(
    database_url: str, pg_admin_dsn: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": database_url, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    with service_process(env, tmp_path / "first.log") as (_proc, target):
        port = int(target.rpartition(":")[2])
        # The serving socket does not allow SO_REUSEPORT sharing.
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as refused:
                intruder.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE
        with fresh_database(pg_admin_dsn) as other:
            second = run_service(
                env={**env, "DATABASE_URL": other, "ENTITLEMENTS_LISTEN": target}, timeout=30
            )
            assert second.returncode == EXIT_PORT_IN_USE
            assert second.stderr == f"entitlements-service: {target} is already in use\n"
            assert migrated_versions(other) is None
