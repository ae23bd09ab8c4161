"""`make run` (scripts/run_dev.py) run twice, beside a held port, killed and hung up: one run
per data directory, dev.env never overwritten, the embedded PostgreSQL always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from service.entrypoints.launch import EXIT_PORT_IN_USE
from tests.support import db_query, fresh_database
from tests.support.service_process import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# What `make run` prints goes to *.console, not *.log: it shows the development secrets it
# generated on purpose (README), which the e2e check of *.log files rightly forbids in logs.
SECRETS = ("BILLING_WEBHOOK_SYNC_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET", "CLERK_WEBHOOK_SECRET")


def run_dev_env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*SECRETS, "DATABASE_URL")}
    return {
        **env,
        "ENTITLEMENTS_DATA_DIR": str(data),
        "ENTITLEMENTS_LISTEN": f"127.0.0.1:{free_port()}",
        "GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",
        # make run's defaults are 127.0.0.1:8081 and :9464, one of each per machine
        "ENTITLEMENTS_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        **extra,
    }


def start_run_dev(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "scripts/run_dev.py"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "make demo" in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"make run exited {proc.returncode}: {log.read_text()}"
        time.sleep(0.2)
    raise TimeoutError(log.read_text())


@contextmanager
def running(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_run_dev(env, log)
    try:
        wait_ready(proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def no_schema(dsn: str) -> bool:
    return bool(db_query(dsn, "SELECT to_regclass('schema_migrations') IS NULL AS n")[0]["n"])


def test_a_second_run_of_the_same_data_dir_refuses_and_dev_env_is_never_overwritten(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    dev_env = data / "dev.env"
    with fresh_database(pg_admin_dsn) as dsn, fresh_database(pg_admin_dsn) as other:
        env = run_dev_env(data, DATABASE_URL=dsn)
        with running(env, tmp_path / "first.console") as first:
            written = dev_env.read_bytes()
            assert b"BILLING_WEBHOOK_SYNC_SECRET=dev_" in written
            mtime = dev_env.stat().st_mtime_ns
            # Other ports and another database: only the data directory is shared.
            second = subprocess.run(
                [sys.executable, "scripts/run_dev.py"],
                cwd=ROOT,
                env=run_dev_env(data, DATABASE_URL=other),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == EXIT_PORT_IN_USE, second.stderr
            assert second.stdout == ""
            assert second.stderr.count("\n") == 1
            assert f"{data} is in use by another `make run` (pid {first.pid})" in second.stderr
            assert dev_env.read_bytes() == written and dev_env.stat().st_mtime_ns == mtime
            assert no_schema(other)  # it started nothing
            assert first.poll() is None
        assert first.returncode == 0

        # A later run (the first has stopped) reuses the secrets and leaves the file alone.
        with running(env, tmp_path / "third.console"):
            assert dev_env.read_bytes() == written and dev_env.stat().st_mtime_ns == mtime
        secret = written.decode().split("BILLING_WEBHOOK_SYNC_SECRET=")[1].split("\n")[0]
        assert f"from {dev_env}" in (tmp_path / "third.console").read_text()
        assert secret not in (tmp_path / "third.console").read_text()  # reused, not re-generated


def test_a_held_port_is_refused_before_anything_starts(pg_admin_dsn: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with fresh_database(pg_admin_dsn) as dsn:
        env = run_dev_env(data, DATABASE_URL=dsn)
        holder = subprocess.Popen(  # a process of its own holds the gateway's port
            [
                sys.executable,
                "-c",
                "import http.server as h, sys; "
                "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.BaseHTTPRequestHandler)"
                ".serve_forever()",
                env["GATEWAY_LISTEN"].rpartition(":")[2],
            ]
        )
        try:
            deadline = time.monotonic() + 10
            while not any(
                c.laddr and c.laddr.port == int(env["GATEWAY_LISTEN"].rpartition(":")[2])
                for c in psutil.Process(holder.pid).net_connections()
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            done = subprocess.run(
                [sys.executable, "scripts/run_dev.py"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            holder.kill()
            holder.wait()
        assert done.returncode == EXIT_PORT_IN_USE, done.stderr
        assert done.stderr == f"make run: {env['GATEWAY_LISTEN']} is already in use\n"
        assert not (data / "dev.env").exists()
        assert no_schema(dsn)


def postgres_of(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def test_embedded_postgres_of_a_killed_run_is_adopted_and_stopped_on_sighup(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    pgdata = (data / "pg").resolve()
    env = run_dev_env(data)
    killed = start_run_dev(env, tmp_path / "killed.console")
    started: list[psutil.Process] = [psutil.Process(killed.pid)]
    try:
        wait_ready(killed, tmp_path / "killed.console")
        family = psutil.Process(killed.pid).children()
        started += family
        killed.send_signal(signal.SIGKILL)  # no clean-up at all: its PostgreSQL is orphaned
        killed.wait()
        for child in family:
            child.kill()
        psutil.wait_procs(family, timeout=10)
        assert postgres_of(pgdata), "the orphaned PostgreSQL should still be running"

        env = run_dev_env(data)  # fresh ports: nothing depends on the old ones being free
        hung_up = start_run_dev(env, tmp_path / "hung_up.console")
        started.append(psutil.Process(hung_up.pid))
        wait_ready(hung_up, tmp_path / "hung_up.console")
        started += psutil.Process(hung_up.pid).children()
        assert (
            f"stale handle(s) of ended process(es) [{killed.pid}]"
            in (tmp_path / "hung_up.console").read_text()
        )
        hung_up.send_signal(signal.SIGHUP)
        assert hung_up.wait(timeout=60) == 0
        assert postgres_of(pgdata) == []
    finally:  # never leave a process behind, whatever failed
        everyone = list(started)
        for proc in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                everyone += proc.children(recursive=True)
        for proc in [*everyone, *postgres_of(pgdata)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
