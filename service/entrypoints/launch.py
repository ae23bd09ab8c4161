"""What `entitlements-service` settles before it serves: the port is free (checked before any
migration, so a second instance on a held port changes nothing), the one-shot `migrate`
command, and the exit codes an operator (or Kubernetes) sees.

| exit code | meaning |
|---|---|
| 2 | bad setting or catalog; DATABASE_URL cannot be read as a PostgreSQL URL |
| 3 | the database is unreachable at start or refuses the connection (no such database or |
|   | role, wrong password, TLS required or refused) |
| 4 | the listen address is already in use |
| 5 | ENTITLEMENTS_MIGRATE_ON_START=false and the database lacks a migration this version needs |
"""

from __future__ import annotations

import errno
import logging
import socket

import asyncpg

from service.adapters.postgres.connect_errors import connect_explained
from service.adapters.postgres.migrate import migrate

log = logging.getLogger("entitlements.service")

EXIT_CONFIG = 2
EXIT_DATABASE_UNAVAILABLE = 3
EXIT_PORT_IN_USE = 4
EXIT_SCHEMA_BEHIND = 5


class PortInUse(Exception):
    """The listen address is held by another process."""

    def __init__(self, listen: str) -> None:
        super().__init__(f"{listen} is already in use")
        self.listen = listen


def port_in_use(listen: str) -> bool:
    """Whether something already listens on `host:port` (port 0 never is).

    A plain bind, without SO_REUSEPORT, fails on a port any socket listens on, with or without
    that option; SO_REUSEADDR keeps connections of an earlier run in TIME_WAIT from counting.
    Addresses that do not resolve are left to the server to report."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return False
    try:
        addresses = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def ensure_port_free(listen: str) -> None:
    if port_in_use(listen):
        raise PortInUse(listen)


async def migrate_database(dsn: str) -> list[int]:
    """`entitlements-service migrate`: apply every pending migration on one connection (under
    the migrations' advisory lock, so concurrent runs are safe); the versions applied now."""
    conn = await connect_explained(lambda: asyncpg.connect(dsn, timeout=10), dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def probe_database(dsn: str) -> None:
    """Connect once and close: before `--workers` fork, so a database that cannot be reached
    is reported once (the same errors as Store.open)."""
    conn = await connect_explained(lambda: asyncpg.connect(dsn, timeout=10), dsn)
    await conn.close()
