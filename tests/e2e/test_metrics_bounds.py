"""The metrics listener (ENTITLEMENTS_METRICS_LISTEN) against idle, half-sent requests, on a
real process and on the --workers supervisor: no thread per connection, each cut at the header
deadline, and a scrape answered meanwhile. (Before: prometheus-client's WSGI server held a
thread per connection, 200 idle requests 208 threads for 60 s, with a listen backlog of 5.)"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support import SYNC_SECRET
from tests.support.metrics import scrape
from tests.support.service_process import SCRIPTS, free_port, service_process, wait_serving

pytestmark = pytest.mark.e2e

IDLE_CONNECTIONS = 200
HEADER_TIMEOUT = "2"


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def _hold_idle_partial_requests(pid: int, port: int) -> None:
    """200 connections each sending half a request line: the process's thread count stays
    where it was, a scrape succeeds meanwhile, and every connection is closed by the server
    at the header deadline."""
    before = threads(pid)
    with ExitStack() as stack:
        conns = []
        for _ in range(IDLE_CONNECTIONS):
            conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            conn.sendall(b"GET /metr")
            conns.append(conn)
        time.sleep(0.5)
        during = threads(pid)
        began = time.monotonic()
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        scrape_seconds = time.monotonic() - began
        assert samples, "the scrape returned no series"
        assert during <= before + 4, f"threads {before} -> {during} with idle connections"
        assert scrape_seconds < 2
        # Every idle connection is cut at the header deadline (2 s), none held longer.
        deadline = time.monotonic() + 6
        for conn in conns:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while conn.recv(1024):
                    pass
            except ConnectionResetError:
                pass
        assert time.monotonic() < deadline, "idle connections outlived the header deadline"


def test_idle_partial_requests_hold_no_threads(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{port}",
        "ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS": HEADER_TIMEOUT,
    }
    with service_process(env, tmp_path / "service.log") as (proc, _):
        _hold_idle_partial_requests(proc.pid, port)


@contextmanager
def _supervisor(database_url: str, tmp_path: Path, metrics_port: int) -> Iterator[int]:
    target = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_LISTEN": target,
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS": HEADER_TIMEOUT,
    }
    with open(tmp_path / "workers.log", "wb") as log:
        parent = subprocess.Popen(
            [str(SCRIPTS / "entitlements-service"), "--workers", "2"],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        wait_serving(target)
        yield parent.pid
    finally:
        parent.terminate()
        try:
            parent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            parent.kill()
            parent.wait()


def test_the_workers_supervisor_scrape_holds_no_threads(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    with _supervisor(database_url, tmp_path, port) as pid:
        _hold_idle_partial_requests(pid, port)
