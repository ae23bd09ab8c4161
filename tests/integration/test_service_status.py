"""GetServiceStatus (`entitlements status`) against real gRPC and PostgreSQL: unknown plans are
read back from the stored deliveries' notes, counted per delivery (a replay rewrites a note, it
does not add one), within the window, through the partial index; refused without the secret."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from service.adapters.postgres.operations import UNKNOWN_PLAN_DELIVERIES
from service.application.status import MAX_WINDOW_HOURS
from tests.conftest import Harness, rpc_code
from tests.support import event, now_ms
from tests.support.rpc import apply, sql_rows, subject

pytestmark = pytest.mark.integration

SLUG = "enterprise_2029"


async def status(h: Harness, hours: int = 0) -> sync_pb.GetServiceStatusResponse:
    response: sync_pb.GetServiceStatusResponse = await h.sync.GetServiceStatus(
        sync_pb.GetServiceStatusRequest(window_hours=hours), metadata=h.auth
    )
    return response


async def bought_unknown_plan(h: Harness, who: str) -> str:
    payload = event("item_active_pro_month", at_ms=now_ms(), subject=who, plan_slug=SLUG)
    payload["data"]["plan_id"] = payload["data"]["plan"]["id"] = "cplan_2029"
    answer = await apply(h, payload)
    assert any(SLUG in note for note in answer.notes)
    return answer.subject


async def test_unknown_plans_counted_per_delivery_within_the_window(
    harness: Harness, database_url: str
) -> None:
    quiet = await status(harness)
    assert quiet.serving and list(quiet.unknown_plans) == [] and quiet.window_hours == 168
    assert quiet.catalog_fingerprint == harness.running.app.catalog.fingerprint
    assert quiet.log_id == await harness.store.change_log_identity()
    assert quiet.unknown_plan_policy == "default"

    old, first, latest = subject("st_old"), subject("st_first"), subject("st_latest")
    for who in (old, first, latest):
        await bought_unknown_plan(harness, who)
    await sql_rows(
        database_url,
        "UPDATE deliveries SET recorded_at = now() - interval '200 hours' WHERE subject = $1",
        old,
    )
    replayed = harness.sync.ReplayDeliveries(
        sync_pb.ReplayDeliveriesRequest(subject=first), metadata=harness.auth
    )
    assert [m async for m in replayed]

    (week,) = (await status(harness)).unknown_plans
    assert (week.slug, week.plan_id, week.deliveries) == (SLUG, "cplan_2029", 2)
    assert (week.example_subject, week.last_seen.ToMilliseconds() <= now_ms()) == (latest, True)
    assert (
        week.note == f"unknown plan slug '{SLUG}' (id 'cplan_2029') mapped to default plan 'free'"
    )
    (longer,) = (await status(harness, 300)).unknown_plans
    assert (
        longer.deliveries == 3
        and longer.first_seen.ToMilliseconds() < week.first_seen.ToMilliseconds()
    )


async def test_the_read_can_use_the_partial_index(harness: Harness, database_url: str) -> None:
    """The status query's predicate matches the index's (else it scans every delivery)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET enable_seqscan = off")
        plan = await conn.fetch("EXPLAIN " + UNKNOWN_PLAN_DELIVERIES, 1, 10)
    finally:
        await conn.close()
    assert "deliveries_naming_unknown_plans" in "\n".join(r[0] for r in plan)


async def test_a_bad_window_or_no_secret_is_refused(harness: Harness) -> None:
    for hours in (-1, MAX_WINDOW_HOURS + 1):
        with pytest.raises(grpc.RpcError) as refused:
            await status(harness, hours)
        assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as anonymous:
        await harness.sync.GetServiceStatus(sync_pb.GetServiceStatusRequest())
    assert rpc_code(anonymous.value) == grpc.StatusCode.UNAUTHENTICATED
