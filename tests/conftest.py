"""Shared fixtures: a fresh PostgreSQL database per run, and a real gRPC server per test."""

from __future__ import annotations

import os
import tempfile
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
    "usage_counters, usage_records, usage_reservations"
)

# Every service process a test starts serves its metrics on a free port of its own (the
# default, 127.0.0.1:9464, is one port for the whole machine); a test of the endpoint sets one.
os.environ.setdefault("ENTITLEMENTS_METRICS_LISTEN", "127.0.0.1:0")


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
