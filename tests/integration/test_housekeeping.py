"""Housekeeping against real PostgreSQL: odd payloads are scrubbed, a failing job does not stop
the others, and scratch schemas left by an interrupted verify of an older version go."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from service.application.housekeeping import housekeeping_pass
from tests.conftest import Harness
from tests.integration.test_cache_and_watch import replica
from tests.support import Clock, event, new_event_id, now_ms
from tests.support.rpc import apply, sql_rows, subject

pytestmark = pytest.mark.integration


async def _sql(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return await sql_rows(dsn, sql, *args)


async def _delivery(h: Harness, event_id: str) -> asyncpg.Record:
    rows = await sql_rows(h.store.dsn, "SELECT * FROM deliveries WHERE event_id = $1", event_id)
    assert rows
    return rows[0]


# ---- 5, 7: housekeeping survives odd payloads; abandoned scratch schemas go ---------------


async def test_housekeeping_scrubs_deep_payloads_and_survives_a_failing_job(
    harness: Harness, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b'{"email":"x@example.com","n":' + b"[" * 600 + b"]" * 600 + b"}"
    event_id = new_event_id()
    await _sql(
        database_url,
        """INSERT INTO deliveries (event_id, type, payload, outcome, received_at, recorded_at)
           VALUES ($1, 'user.updated', $2, 'IGNORED', now(), now() - interval '400 days')""",
        event_id,
        deep,
    )

    async def broken(*_: Any) -> int:
        raise RuntimeError("prune failed")

    harness.store.prune_change_log = broken  # type: ignore[method-assign, assignment]
    await housekeeping_pass(harness.store, 1.0, 1.0)
    row = await _delivery(harness, event_id)
    assert row["scrubbed_at"] is not None and b"x@example.com" not in row["payload"]
    assert "could not prune the change log" in caplog.text


async def test_abandoned_verify_schemas_are_dropped_at_start_up(
    database_url: str, clock: Clock
) -> None:
    abandoned, running = "verify_00000000deadbeef", "verify_00000000feedf00d"
    for schema in (abandoned, running):
        await _sql(database_url, f"CREATE SCHEMA {schema}")
        await _sql(database_url, f"CREATE TABLE {schema}.deliveries (x int)")
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(7305, hashtext($1))", running)
        async with replica(database_url, clock) as started:
            names = {
                r["nspname"] for r in await _sql(database_url, "SELECT nspname FROM pg_namespace")
            }
            assert abandoned not in names
            assert running in names  # its verify still holds the lock
            await holder.close()  # that verify dies: now it may go (by us, or by any other
            # replica's housekeeping on this database)
            await started.store.drop_abandoned_scratch_schemas()
            names = {
                r["nspname"] for r in await _sql(database_url, "SELECT nspname FROM pg_namespace")
            }
            assert running not in names
    finally:
        await holder.close()


async def test_verify_leaves_no_scratch_schema(harness: Harness) -> None:
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=subject("v")))
    responses = [
        r
        async for r in harness.sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=harness.auth)
    ]
    assert responses[-1].finished and not responses[-1].differences
    assert await harness.store.drop_abandoned_scratch_schemas() == []
