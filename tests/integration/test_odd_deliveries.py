"""Nothing poisons it: signed but odd deliveries against real PostgreSQL and real gRPC servers.

Each test here failed on the code before SPEC §9's bounds (issue "Nothing poisons it").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from tests.conftest import Harness, rpc_code
from tests.integration.test_cache_and_watch import replica, wait_live
from tests.support import SYNC_SECRET, event, load_fixture, new_event_id, now_ms
from tests.support.rpc import apply, entitlements, outcome_name, plan_of, sql_rows, subject

pytestmark = pytest.mark.integration

DAY = 86_400_000


async def _delivery(h: Harness, event_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(h.store.dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM deliveries WHERE event_id = $1", event_id)
        assert row is not None
        return row
    finally:
        await conn.close()


async def _sql(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return await sql_rows(dsn, sql, *args)


async def _log_position(h: Harness) -> int:
    """The change log's current end, as a resume point (the first "caught up" message)."""
    async for message in h.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest()):
        assert not message.subject
        return int(message.version)
    raise AssertionError("the watch ended without a message")


async def _watched(h: Harness, subjects: list[str], since: int) -> set[str]:
    """Subjects a fresh Watch from `since` reports (without an error) within a few seconds."""
    seen: set[str] = set()
    request = pb.WatchEntitlementsRequest(subjects=subjects, since_version=since)
    stream = h.entitlements.WatchEntitlements(request)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            async for message in stream:
                if message.subject:
                    seen.add(message.subject)
                if seen == set(subjects):
                    break
    stream.cancel()
    return seen


# ---- 1, 2: values past year 9999 or beyond int64 ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("period_end", 253402300800000000),  # microseconds
        ("past_due_at", 253402300800000000),
        ("period_end", 1e30),
        ("timestamp", 1e20),
        ("timestamp", 2**63),
    ],
)
async def test_out_of_range_values_are_applied_bounded_and_reads_still_work(
    harness: Harness, field: str, value: Any
) -> None:
    who, other = subject("edge"), subject("bystander")
    since = await _log_position(harness)
    fixture = "item_past_due_pro" if field == "past_due_at" else "item_canceled_pro"
    payload = event(fixture, at_ms=now_ms(), subject=who)
    if field == "timestamp":
        payload["timestamp"] = value
    else:
        payload["data"][field] = value
    event_id = new_event_id()
    r = await apply(harness, payload, event_id)
    assert outcome_name(r) == "APPLIED"
    assert any("ignored" in note for note in r.notes)
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=other))
    ent = await entitlements(harness, who)
    assert ent.plan == "pro"
    batch = await harness.entitlements.BatchCanUse(
        pb.BatchCanUseRequest(
            checks=[pb.CanUseRequest(subject=s, feature="dataExport") for s in (who, other)]
        )
    )
    assert [c.allowed for c in batch.results] == [True, True]
    assert await _watched(harness, [who, other], since) == {who, other}
    for row in await _sql(harness.store.dsn, "SELECT * FROM items WHERE subject = $1", who):
        for column in ("period_end_ms", "past_due_at_ms", "event_ms"):
            assert row[column] is None or row[column] < 7_258_118_400_000


async def test_state_stored_before_the_bounds_never_breaks_a_read(harness: Harness) -> None:
    """Rows written by an older version (a period end in microseconds) read as missing values:
    no INTERNAL for the subject, its batch neighbours, or a Watch from the start."""
    who, other = subject("legacy"), subject("neighbour")
    since = await _log_position(harness)
    await apply(harness, event("item_canceled_pro", at_ms=now_ms(), subject=who))
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=other))
    await _sql(
        harness.store.dsn,
        "UPDATE items SET period_end_ms = 253402300800000000, past_due_at_ms = -1 "
        "WHERE subject = $1",
        who,
    )
    if harness.running.cache is not None:
        harness.running.cache.clear()
    assert (await entitlements(harness, who)).plan == "pro"  # canceled, no usable period end
    for feature in ("dataExport", "aiInsights"):
        await harness.entitlements.CanUse(pb.CanUseRequest(subject=who, feature=feature))
    await harness.entitlements.GetLimits(pb.GetLimitsRequest(subject=who))
    batch = await harness.entitlements.BatchCanUse(
        pb.BatchCanUseRequest(
            checks=[pb.CanUseRequest(subject=s, feature="dataExport") for s in (who, other, who)]
        )
    )
    assert len(batch.results) == 3
    assert await _watched(harness, [who, other], since) == {who, other}


# ---- 4, 11: event times in the future, envelope timestamps in seconds ------------------------


async def test_a_far_future_event_cannot_freeze_its_item(harness: Harness) -> None:
    who = subject("future")
    now = now_ms()
    future = event("item_active_pro_month", at_ms=now, subject=who, timestamp_ms=now + 365 * DAY)
    r = await apply(harness, future)
    assert outcome_name(r) == "APPLIED" and any("clamped" in n for n in r.notes)
    await asyncio.sleep(0.01)
    ended = event("item_ended_pro", at_ms=now_ms(), subject=who, timestamp_ms=now_ms() + 1000)
    ended["data"]["id"] = future["data"]["id"]
    r = await apply(harness, ended)
    assert outcome_name(r) == "APPLIED"  # not STALE for ever
    assert await plan_of(harness, who) == "free"


async def test_seconds_envelope_timestamp_orders_correctly(harness: Harness) -> None:
    who = subject("seconds")
    now = now_ms()
    active = event("item_active_pro_month", at_ms=now - 60_000, subject=who)
    active["timestamp"] = (now - 60_000) // 1000  # Clerk's OpenAPI examples: 10 digits
    assert outcome_name(await apply(harness, active)) == "APPLIED"
    older = event("item_ended_pro", at_ms=now - 120_000, subject=who, timestamp_ms=now - 120_000)
    older["data"]["id"] = active["data"]["id"]
    assert outcome_name(await apply(harness, older)) == "STALE"  # 1970 would have lost
    assert await plan_of(harness, who) == "pro"


# ---- 6: events about a subject are linked to it, so deletion scrubs them -----------------


async def test_user_updated_is_linked_and_scrubbed_on_deletion(harness: Harness) -> None:
    who = subject("linked")
    updated = load_fixture("user_created", at_ms=now_ms())
    updated["type"] = "user.updated"
    updated["data"]["id"] = who
    early, late = new_event_id(), new_event_id()
    r = await apply(harness, updated, early)
    assert outcome_name(r) == "IGNORED" and r.subject == who
    assert b"ada@example.com" in (await _delivery(harness, early))["payload"]
    assert (await _delivery(harness, early))["subject"] == who
    deleted = event("user_deleted", at_ms=now_ms(), subject=who)
    deleted["data"]["id"] = who
    assert outcome_name(await apply(harness, deleted)) == "APPLIED"
    assert b"ada@example.com" not in (await _delivery(harness, early))["payload"]
    await apply(harness, updated, late)  # a late arrival after the deletion
    assert b"ada@example.com" not in (await _delivery(harness, late))["payload"]
    history = await harness.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=harness.auth
    )
    assert early in {e.event_id for e in history.entries}


# ---- 8: an item id belongs to one subject -------------------------------------------------


async def test_an_item_cannot_be_moved_to_another_subject(
    harness: Harness, database_url: str
) -> None:
    owner, intruder = subject("owner"), subject("intruder")
    active = event("item_active_pro_month", at_ms=now_ms(), subject=owner)
    assert outcome_name(await apply(harness, active)) == "APPLIED"
    async with replica(database_url, harness.clock) as b:
        await wait_live(harness)
        assert await plan_of(harness, owner) == "pro" and await plan_of(b, owner) == "pro"
        moved = event("item_active_pro_month", at_ms=now_ms() + 1000, subject=intruder)
        moved["data"]["id"] = active["data"]["id"]
        moved["timestamp"] = now_ms() + 1000
        event_id = new_event_id()
        r = await apply(b, moved, event_id)
        assert outcome_name(r) == "IGNORED"
        assert any("belongs to another subject" in n for n in r.notes)
        assert (await _delivery(b, event_id))["outcome"] == "IGNORED"
        for h in (harness, b):
            assert await plan_of(h, owner) == "pro"
            assert await plan_of(h, intruder) == "free"
        async with replica(database_url, harness.clock) as fresh:  # a restarted replica
            assert await plan_of(fresh, owner) == "pro"
            assert await plan_of(fresh, intruder) == "free"
    rows = await _sql(
        database_url, "SELECT subject FROM items WHERE item_id = $1", active["data"]["id"]
    )
    assert [r["subject"] for r in rows] == [owner]


# ---- 9: request values out of range, echoed values, invalid UTF-8 ---------------------------


async def test_grant_expiry_past_year_9999_is_invalid_argument(harness: Harness) -> None:
    request = sync_pb.GrantPlanRequest(subject=subject("grant"), plan="pro", reason="comp")
    request.expires_at.CopyFrom(Timestamp(seconds=300_000_000_000))  # year ~11476
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.sync.GrantPlan(request, metadata=harness.auth)
    assert rpc_code(err.value) is grpc.StatusCode.INVALID_ARGUMENT


async def test_echoed_values_are_cut(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.entitlements.CanUse(
            pb.CanUseRequest(subject="user_1", feature="f" * 60_000)  # under the read cap
        )
    assert rpc_code(err.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details() or "") < 600
    with pytest.raises(grpc.aio.AioRpcError) as err:  # over it: refused before it is parsed
        await harness.entitlements.CanUse(
            pb.CanUseRequest(subject="user_1", feature="f" * 1_000_000)
        )
    assert rpc_code(err.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == "request message too large"


@pytest.mark.parametrize(
    ("method", "raw", "metadata"),
    [
        ("/entitlements.v1.EntitlementService/CanUse", b"\x0a\x02\xff\xfe\x12\x01a", ()),
        ("/entitlements.v1.EntitlementService/GetEntitlements", b"\x0a\x01\xff", ()),
        (
            "/entitlements.v1.BillingSyncService/ApplyBillingEvent",
            b"\x0a\x01\xff",
            (("authorization", f"Bearer {SYNC_SECRET}"),),
        ),
    ],
)
async def test_invalid_utf8_is_invalid_argument(
    harness: Harness, method: str, raw: bytes, metadata: Any, caplog: pytest.LogCaptureFixture
) -> None:
    call = harness.channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(raw, metadata=metadata)
    assert rpc_code(err.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in caplog.text


# ---- 10: grace is anchored, with Clerk's documented payload shapes ------------------------


def _clerk_item(item_id: str, status: str, period_end: int) -> dict[str, Any]:
    """An item as in Clerk's webhook docs and OpenAPI examples: no past_due_at, `interval`,
    a slim plan, `payer: null` inside a subscription."""
    return {
        "id": item_id,
        "object": "subscription_item",
        "status": status,
        "interval": "month",
        "period_start": period_end - 30 * DAY,
        "period_end": period_end,
        "plan_id": "cplan_2x9ProPlan00002",
        "plan": {
            "id": "cplan_2x9ProPlan00002",
            "slug": "pro",
            "name": "Pro",
            "is_recurring": True,
            "amount": 1200,
            "currency": "USD",
        },
        "payer": None,
        "subscription_id": None,
    }


def _clerk_subscription(
    who: str, event_type: str, ts_seconds: int, items: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "object": "event",
        "type": event_type,
        "timestamp": ts_seconds,  # 10 digits, as in the OpenAPI examples
        "instance_id": "ins_2x9J8hG6fE4dC2bA",
        "data": {
            "id": "csub_2x9Sub",
            "object": "commerce_subscription",
            "status": extra.pop("status", "active"),
            "payer_id": "cpayer_2x9",
            "payer": {
                "id": "cpayer_2x9",
                "object": "commerce_payer",
                "user_id": who,
                "organization_id": "",
                "organization_name": "",
            },
            "items": items,
            **extra,
        },
    }


async def test_relisting_a_past_due_item_does_not_restart_grace(harness: Harness) -> None:
    who = subject("grace")
    item_id = f"csub_item_{who}"
    start = now_ms() - 4 * DAY - 60_000  # the card failed 4 days ago
    period_end = start + 20 * DAY
    active = {
        "object": "event",
        "type": "subscriptionItem.active",
        "timestamp": (start - DAY) // 1000,
        "data": {
            **_clerk_item(item_id, "active", period_end),
            "payer": {"user_id": who, "organization_id": ""},
        },
    }
    assert outcome_name(await apply(harness, active)) == "APPLIED"
    past_due = _clerk_subscription(
        who,
        "subscription.pastDue",
        start // 1000,
        [_clerk_item(item_id, "past_due", period_end)],
        status="past_due",
        past_due_at=start,
    )
    assert outcome_name(await apply(harness, past_due)) == "APPLIED"
    for days in (1, 2, 3, 4):  # later subscription events re-list the item, no past_due_at
        relisted = _clerk_subscription(
            who,
            "subscription.updated",
            (start + days * DAY - 120_000) // 1000,
            [_clerk_item(item_id, "past_due", period_end)],
            status="past_due",
        )
        await apply(harness, relisted)
    ent = await entitlements(harness, who)
    assert ent.plan == "free", "grace ran from the first failure, 3 days, and is over"
    harness.clock.freeze(start + 2 * DAY)
    if harness.running.cache:
        harness.running.cache.clear()
    ent = await entitlements(harness, who)
    assert ent.plan == "pro" and ent.status == pb.ENTITLEMENT_STATUS_PAST_DUE
    assert ent.valid_until.ToMilliseconds() == start + 3 * DAY


async def test_item_past_due_without_any_past_due_at_anchors_on_first_sighting(
    harness: Harness,
) -> None:
    who = subject("grace_first")
    item_id = f"csub_item_{who}"
    first = now_ms() - 2 * DAY
    for offset in (0, DAY, DAY + 3_600_000):
        payload = {
            "object": "event",
            "type": "subscriptionItem.pastDue",
            "timestamp": first + offset,
            "data": {
                **_clerk_item(item_id, "past_due", first + 20 * DAY),
                "payer": {"user_id": who, "organization_id": ""},
            },
        }
        await apply(harness, payload)
    ent = await entitlements(harness, who)
    assert ent.status == pb.ENTITLEMENT_STATUS_PAST_DUE
    assert ent.valid_until.ToMilliseconds() == first + 3 * DAY


async def test_replaying_a_delivery_that_still_cannot_be_applied_keeps_it(
    harness: Harness,
) -> None:
    who = subject("nul")
    event_id = new_event_id()
    payload = event("item_active_pro_month", at_ms=now_ms(), subject=who, plan_slug="pro\0")
    r = await apply(harness, payload, event_id)
    assert outcome_name(r) == "UNPARSEABLE"
    assert any("could not be applied" in n for n in r.notes)
    replayed = [
        result
        async for message in harness.sync.ReplayDeliveries(
            sync_pb.ReplayDeliveriesRequest(subject=who), metadata=harness.auth
        )
        for result in message.results
    ]
    assert [(x.event_id, x.changed) for x in replayed] == [(event_id, False)]
    assert replayed[0].outcome == sync_pb.UNPARSEABLE
    assert (await _delivery(harness, event_id))["outcome"] == "UNPARSEABLE"
    assert await plan_of(harness, who) == "free"


async def test_lifecycle_with_clerks_documented_shapes(harness: Harness) -> None:
    """Purchase, cancel and the end of the period, with payloads shaped as in Clerk's docs:
    `subscription_item` objects with `csub_item_` ids, `interval`, no `past_due_at`, a user
    payer with `organization_id: ""`, `payer: null` items inside `subscription.*`, envelope
    timestamps in seconds."""
    who = subject("shapes")
    t = now_ms() - 10 * DAY
    free_id, paid_id = f"csub_item_free_{who}", f"csub_item_paid_{who}"
    free_item = {**_clerk_item(free_id, "active", t + 30 * DAY), "plan": {"slug": "free_user"}}
    free_item["plan_id"] = "cplan_free"
    created = _clerk_subscription(who, "subscription.created", t // 1000, [free_item])
    assert outcome_name(await apply(harness, created)) == "APPLIED"
    assert await plan_of(harness, who) == "free"
    # Purchase: the free item ends, the paid one becomes active ~50 ms later (Clerk's order).
    ended_free = {**free_item, "status": "ended"}
    paid = _clerk_item(paid_id, "active", t + 30 * DAY)
    purchase_time = t + DAY
    await apply(
        harness,
        {
            "object": "event",
            "type": "subscriptionItem.ended",
            "timestamp": purchase_time // 1000,
            "data": {**ended_free, "payer": {"user_id": who, "organization_id": ""}},
        },
    )
    r = await apply(
        harness,
        _clerk_subscription(who, "subscription.updated", (purchase_time + 50) // 1000 + 1, [paid]),
    )
    assert outcome_name(r) == "APPLIED" and r.plan == "pro"
    # Cancel: the paid item keeps its period end; an upcoming free item is queued.
    period_end = now_ms() + 2 * DAY
    canceled = {**_clerk_item(paid_id, "canceled", period_end)}
    upcoming = {**free_item, "id": f"csub_item_next_{who}", "status": "upcoming"}
    r = await apply(
        harness,
        _clerk_subscription(
            who, "subscription.updated", (now_ms() - DAY) // 1000, [canceled, upcoming]
        ),
    )
    assert outcome_name(r) == "APPLIED"
    ent = await entitlements(harness, who)
    assert ent.plan == "pro" and ent.status == pb.ENTITLEMENT_STATUS_CANCELED
    assert ent.valid_until.ToMilliseconds() == period_end
    harness.clock.freeze(period_end)
    if harness.running.cache is not None:
        harness.running.cache.clear()
    assert await plan_of(harness, who) == "free"  # no event needed at period end
