"""The embedded PostgreSQL (pgserver) used when no DATABASE_URL is given."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """A running pgserver instance; `stop()` shuts it down."""

    uri: str
    _server: Any

    def stop(self) -> None:
        self._server.cleanup()


def clear_stale_handles(pgdata: Path) -> list[int]:
    """Forget what a run that ended without stopping the server (killed, or a hang-up it did
    not handle) left in `pgdata`; the pids it dropped.

    pgserver stops the server when its *last* handle is released, handles being the pids listed
    in `.handle_pids.json`: a dead pid left there means no later run ever stops the server (it
    is orphaned for good). A `postmaster.pid` naming a live process that is not postgres (the
    pid was reused) would make pgserver take that process for the server; it is removed, and
    PostgreSQL starts afresh."""
    import psutil

    handles = pgdata / ".handle_pids.json"
    stale: list[int] = []
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids = [int(pid) for pid in json.loads(handles.read_text())]
        stale = [pid for pid in pids if not psutil.pid_exists(pid)]
        if stale:
            handles.write_text(json.dumps([pid for pid in pids if pid not in stale]))
    postmaster = pgdata / "postmaster.pid"
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
        pid = int(postmaster.read_text().splitlines()[0])
        try:
            is_postgres = psutil.Process(pid).name() == "postgres"
        except psutil.NoSuchProcess:
            is_postgres = True  # not running: PostgreSQL itself replaces a stale lock file
        if not is_postgres:
            postmaster.unlink()
            log.warning("embedded PostgreSQL: removed a stale postmaster.pid (pid %d)", pid)
    if stale:
        log.warning(
            "embedded PostgreSQL under %s: dropped stale handle(s) of ended process(es) %s "
            "(a run that did not stop it); this run stops it when it ends",
            pgdata,
            stale,
        )
    return stale


class EmbeddedPostgresMissing(Exception):
    """No DATABASE_URL and no pgserver: the image installs only the runtime lock, which leaves
    the embedded PostgreSQL out (it is the `embedded` extra, for `make run` and the tests)."""

    def __init__(self) -> None:
        super().__init__(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed "
            "(the `embedded` extra, pgserver): set DATABASE_URL=postgresql://user:password@host/db"
        )


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    try:
        import pgserver  # imported here: only needed when no DATABASE_URL is set
    except ImportError:
        raise EmbeddedPostgresMissing() from None

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    log.info("no DATABASE_URL set: using embedded PostgreSQL (pgserver) under %s", pgdata)
    return EmbeddedPostgres(uri=uri, _server=server)
