"""`entitlements-service --workers N`: N processes serving one port (SO_REUSEPORT), each with
its own pool, cache and change listener, under one supervisor.

The supervisor serves the metrics of all of them on ENTITLEMENTS_METRICS_LISTEN: it gives the
workers a PROMETHEUS_MULTIPROC_DIR of its own before starting them (see metrics_http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace

from service.adapters.postgres.embedded import EmbeddedPostgres, start_embedded_postgres
from service.adapters.postgres.migrate import SchemaBehind
from service.application.ports import StoreUnavailable
from service.config import ServiceSettings
from service.entrypoints.launch import EXIT_DATABASE_UNAVAILABLE, EXIT_SCHEMA_BEHIND
from service.entrypoints.metrics_http import (
    MULTIPROC_ENV,
    MetricsThread,
    worker_exited,
)
from service.entrypoints.server import configure_logging, serve

log = logging.getLogger("entitlements.service")


def _worker(settings: ServiceSettings, log_level: str) -> None:
    configure_logging(log_level)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(serve(settings))
        except SchemaBehind as exc:
            log.error("refusing to start: %s", exc)
            sys.exit(EXIT_SCHEMA_BEHIND)
        except StoreUnavailable as exc:  # lost since main() probed it
            log.error("refusing to start: %s", exc)
            sys.exit(EXIT_DATABASE_UNAVAILABLE)


def run_workers(settings: ServiceSettings, log_level: str) -> int:
    """Start the workers and supervise them: when one exits unexpectedly the others are
    stopped and its exit code is returned."""
    workers = settings.workers
    embedded: EmbeddedPostgres | None = None
    metrics_dir: str | None = None
    endpoint: MetricsThread | None = None
    if settings.database_url is None:
        embedded = start_embedded_postgres(settings.data_dir)
        settings = replace(settings, database_url=embedded.uri)
    host, _, port = settings.listen.rpartition(":")
    if port == "0":
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = str(probe.getsockname()[1])
    if settings.metrics_listen is not None:
        # Before any worker starts: prometheus-client picks its storage when imported.
        metrics_dir = tempfile.mkdtemp(prefix="entitlements-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        endpoint = MetricsThread.start(
            settings.metrics_listen, settings.http_header_timeout_seconds
        )
    # The workers count (settings.metrics), the supervisor serves.
    settings = replace(
        settings, listen=f"{host}:{port}", workers=1, reuse_port=True, metrics_listen=None
    )
    ctx = multiprocessing.get_context("spawn")  # no gRPC state may cross a fork
    procs = [ctx.Process(target=_worker, args=(settings, log_level)) for _ in range(workers)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for proc in procs:
            proc.start()
        log.info("started %d workers on %s:%s: %s", workers, host, port, [p.pid for p in procs])
        while not stopping and all(p.is_alive() for p in procs):
            time.sleep(0.2)
        failed = not stopping
        if failed:
            log.error("a worker exited unexpectedly; stopping the others")
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(timeout=settings.grace_seconds + 10)
            if proc.is_alive():
                proc.kill()
            if proc.pid is not None:
                worker_exited(proc.pid)
        if failed:  # a worker's own exit code when it had one (5: schema behind), else 1
            return next((p.exitcode for p in procs if p.exitcode and p.exitcode > 0), 1)
        return 0
    finally:
        if endpoint is not None:
            endpoint.stop()
        if metrics_dir is not None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None:
            embedded.stop()
