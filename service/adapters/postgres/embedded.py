"""The embedded PostgreSQL (pgserver) used when no DATABASE_URL is given."""

from __future__ import annotations

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


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    import pgserver  # imported here: only needed when no DATABASE_URL is set

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    log.info("no DATABASE_URL set: using embedded PostgreSQL (pgserver) under %s", pgdata)
    return EmbeddedPostgres(uri=uri, _server=server)
