"""Shared fixtures: a fresh PostgreSQL database per run, and a real gRPC server per test."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from grpc import aio

from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from service.adapters.clerk_api import ClerkApiSettings
from service.adapters.postgres.store import Store
from service.config import ServiceSettings, load_catalog
from service.entrypoints.server import RunningServer, start_server
from tests.support import ADMIN_DSN, SYNC_SECRET, Clock, admin_reachable, fresh_database

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

_TABLES = (
    "subjects, items, deliveries, plan_changes, change_log, grants, overrides, "
    "usage_counters, usage_records, usage_reservations, override_events"
)

# Tests run beside a running `make run`: no test may end up on one of its ports. Every service
# process a test starts serves its metrics on a free port of its own (the default,
# 127.0.0.1:9464, is one port for the whole machine; a test of the endpoint sets one), and the
# listen and target settings of a developer's shell (`make shell`) reach no test.
os.environ["ENTITLEMENTS_METRICS_LISTEN"] = "127.0.0.1:0"
for _name in ("ENTITLEMENTS_LISTEN", "ENTITLEMENTS_HTTP_LISTEN", "GATEWAY_LISTEN",
              "ENTITLEMENTS_TARGET", "GATEWAY_URL"):  # fmt: skip
    os.environ.pop(_name, None)
# make run's ports (ENTITLEMENTS_LISTEN, GATEWAY_LISTEN, ENTITLEMENTS_HTTP_LISTEN,
# ENTITLEMENTS_METRICS_LISTEN): held for the whole session (see hold_make_run_ports).
MAKE_RUN_PORTS = (50051, 8080, 8081, 9464)


def _listen_on(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(16)
    except OSError:  # taken (make run is up): just as good while it stays
        sock.close()
        return None
    return sock


@pytest.fixture(scope="session", autouse=True)
def hold_make_run_ports() -> Iterator[None]:
    """Listen on make run's ports for the whole session: a test or a process it starts that
    binds one fails at once, here as beside a running dev stack, so every run checks that no
    test binds a fixed port. A port another process holds (a `make run` that is up) is taken
    over within 0.2 s of its release. A client that dials one by default is accepted and
    closed at once (a failed call, not a hang)."""
    held: dict[int, socket.socket] = {}
    stop = threading.Event()

    def hold() -> None:
        with selectors.DefaultSelector() as selector:
            for initial in held.values():
                selector.register(initial, selectors.EVENT_READ)
            while not stop.is_set():
                for port in MAKE_RUN_PORTS:
                    if port not in held and (taken := _listen_on(port)) is not None:
                        held[port] = taken
                        selector.register(taken, selectors.EVENT_READ)
                if not held:
                    stop.wait(0.2)
                    continue
                for key, _ in selector.select(timeout=0.2):
                    with contextlib.suppress(OSError):
                        key.fileobj.accept()[0].close()  # type: ignore[union-attr]

    for port in MAKE_RUN_PORTS:  # before any test runs
        if (first := _listen_on(port)) is not None:
            held[port] = first
    holder = threading.Thread(target=hold, name="make-run-ports", daemon=True)
    holder.start()
    try:
        yield
    finally:
        stop.set()
        holder.join()
        for sock in held.values():
            sock.close()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """The machine's PostgreSQL when reachable, else an embedded one (pgserver)."""
    if admin_reachable(ADMIN_DSN):
        yield ADMIN_DSN
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="ent-pg-") as tmp:
        server = pgserver.get_server(Path(tmp), cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def database_url(pg_admin_dsn: str) -> Iterator[str]:
    with fresh_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class Harness:
    """A running service on port 0 with stubs for both services."""

    running: RunningServer
    channel: aio.Channel
    entitlements: pb_grpc.EntitlementServiceAsyncStub
    sync: sync_grpc.BillingSyncServiceAsyncStub
    store: Store
    clock: Clock
    target: str

    @property
    def auth(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {SYNC_SECRET}"),)


async def _truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {_TABLES} CASCADE")
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await conn.close()


async def start_harness(
    dsn: str,
    clock: Clock,
    secret: str | None = SYNC_SECRET,
    clerk: ClerkApiSettings | None = None,
    reconcile_interval_seconds: float = 0.0,
    tracer_provider: TracerProvider | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    catalog = load_catalog(None)
    store = await Store.open(dsn)
    settings = ServiceSettings(
        database_url=dsn,
        listen="127.0.0.1:0",
        catalog_path=None,
        sync_secret=secret,
        data_dir=Path(".data"),
        grace_seconds=0.5,
        health_interval_seconds=0.1,
        clerk=clerk,
        reconcile_interval_seconds=reconcile_interval_seconds,
        **{"metrics": True, **overrides},  # counted (no endpoint): every call takes that path
    )
    running = await start_server(settings, catalog, store, clock, tracer_provider)
    target = f"127.0.0.1:{running.port}"
    channel = aio.insecure_channel(target)
    try:
        yield Harness(
            running,
            channel,
            pb_grpc.EntitlementServiceStub(channel),
            sync_grpc.BillingSyncServiceStub(channel),
            store,
            clock,
            target,
        )
    finally:
        await channel.close()
        await running.stop()


@pytest.fixture
async def harness(database_url: str, clock: Clock) -> AsyncIterator[Harness]:
    await _truncate(database_url)
    async for h in start_harness(database_url, clock):
        yield h


def rpc_code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.aio.AioRpcError)
    return exc.code()
