"""Replay of stored deliveries (after a parser fix: exactly once) and verification of the live
state against a rebuild from the stored log in a scratch schema."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from service.application.deliveries import ApplyDelivery, DeliveryRules, ReplayDelivery
from service.application.records import DeliverySelector, StoredDelivery
from service.application.replay import ReplayDeliveries
from service.domain.deliveries import Delivery
from service.domain.events import EventKind, NormalizedEvent
from tests.conftest import Harness
from tests.support import body, event, new_event_id, now_ms
from tests.support.fakes import NoChanges
from tests.support.rpc import apply, entitlements, plan_of, subject

pytestmark = pytest.mark.integration

MINUTE = 60_000


async def store_as_an_older_parser_did(h: Harness, payload: dict[str, object]) -> str:
    """Store a delivery the way a release whose parser could not read it did: UNPARSEABLE."""
    event_id = new_event_id()
    old_reading = NormalizedEvent(
        EventKind.UNPARSEABLE, str(payload["type"]), error="no plan slug or plan id (old parser)"
    )
    old_parser = ApplyDelivery(
        h.store, DeliveryRules(h.running.app.catalog, h.clock), NoChanges(), lambda _: old_reading
    )
    result = await old_parser(
        Delivery(event_id, str(payload["type"]), body(payload), now_ms(), now_ms())
    )
    assert result.outcome == "UNPARSEABLE"
    return event_id


async def replay(h: Harness, **selector: object) -> list[sync_pb.ReplayedDelivery]:
    call = h.sync.ReplayDeliveries(
        sync_pb.ReplayDeliveriesRequest(**selector),  # type: ignore[arg-type]
        metadata=h.auth,
    )
    messages = [m async for m in call]
    assert messages[-1].done == messages[-1].total
    return [r for m in messages for r in m.results]


async def verify(h: Harness) -> sync_pb.VerifyStateResponse:
    call = h.sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=h.auth)
    messages = [m async for m in call]
    assert messages[-1].finished and not any(m.finished for m in messages[:-1])
    return messages[-1]


async def plan_change_count(h: Harness, who: str) -> int:
    history = await h.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=h.auth
    )
    return sum(e.kind == sync_pb.HISTORY_KIND_PLAN_CHANGE for e in history.entries)


async def test_replay_turns_unparseable_into_applied_exactly_once(harness: Harness) -> None:
    who = subject("replay")
    at = now_ms() - MINUTE
    event_id = await store_as_an_older_parser_did(
        harness, event("item_active_pro_month", at_ms=at, subject=who)
    )
    assert await plan_of(harness, who) == "free"

    replayed = await replay(harness, unparseable=True)
    mine = [r for r in replayed if r.event_id == event_id]
    assert len(mine) == 1 and mine[0].changed
    assert (mine[0].previous_outcome, mine[0].outcome) == (sync_pb.UNPARSEABLE, sync_pb.APPLIED)
    assert (mine[0].previous_plan, mine[0].plan) == ("free", "pro")
    version = (await entitlements(harness, who)).version
    assert await plan_of(harness, who) == "pro"

    # Again: nothing is UNPARSEABLE any more; replaying everything changes nothing either.
    assert [r for r in await replay(harness, unparseable=True) if r.event_id == event_id] == []
    again = [r for r in await replay(harness, all=True) if r.event_id == event_id]
    assert len(again) == 1 and not again[0].changed and again[0].outcome == sync_pb.APPLIED
    assert (await entitlements(harness, who)).version == version
    assert await plan_change_count(harness, who) == 1


async def test_replay_by_subject_keeps_newer_state(harness: Harness) -> None:
    who, other = subject("mine"), subject("other")
    at = now_ms() - 10 * MINUTE
    await apply(harness, event("item_active_pro_month", at_ms=at, subject=who))
    await apply(harness, event("item_ended_pro", at_ms=at + MINUTE, subject=who))
    await apply(harness, event("item_active_pro_month", at_ms=at, subject=other))
    replayed = await replay(harness, subject=who)
    assert {r.subject for r in replayed} == {who} and len(replayed) == 2
    assert not any(r.changed for r in replayed)  # the older active stays behind the end
    assert await plan_of(harness, who) == "free"


async def test_replay_needs_one_selector(harness: Harness) -> None:
    for selector in ({}, {"all": True, "unparseable": True}):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await replay(harness, **selector)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_verify_is_clean_then_finds_a_corrupted_row(
    harness: Harness, database_url: str
) -> None:
    at = now_ms() - 30 * MINUTE
    canceled, deleted, granted = subject("canceled"), subject("deleted"), subject("granted")
    await apply(harness, event("item_active_pro_month", at_ms=at, subject=canceled))
    await apply(harness, event("item_canceled_pro", at_ms=at + MINUTE, subject=canceled))
    await apply(harness, event("subscription_created_free", at_ms=at, subject=deleted))
    await apply(harness, event("user_deleted", at_ms=at + MINUTE, subject=deleted))
    await apply(harness, event("item_active_pro_month", at_ms=at, subject=deleted))  # late
    await harness.sync.GrantPlan(
        sync_pb.GrantPlanRequest(subject=granted, plan="lifetime", reason="deal"),
        metadata=harness.auth,
    )
    clean = await verify(harness)
    assert list(clean.differences) == [] and clean.subjects_checked >= 3

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE items SET status = 'active', lifecycle_rank = 1 WHERE subject = $1", canceled
        )
        found = await verify(harness)
        schemas = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'verify_%'"
        )
    finally:
        await conn.close()
    assert schemas == 0  # the scratch schema is gone
    mine = [d.description for d in found.differences if d.subject == canceled]
    assert mine and "status live 'active', rebuilt 'canceled'" in mine[0]
    assert {d.subject for d in found.differences} == {canceled}


async def test_verify_ignores_writes_made_while_it_runs(harness: Harness) -> None:
    at = now_ms() - 30 * MINUTE
    for n in range(150):
        await apply(harness, event("item_active_pro_month", at_ms=at, subject=f"user_base_{n}"))
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():
            who = subject(f"busy{n}")
            await apply(harness, event("item_active_pro_month", at_ms=at, subject=who))
            await apply(harness, event("item_canceled_pro", at_ms=at + MINUTE, subject=who))
            n += 1
        return n

    writer = asyncio.create_task(keep_writing())
    try:
        report = await verify(harness)
    finally:
        stop.set()
        written = await writer
    assert written > 0 and list(report.differences) == []


async def test_replay_with_a_parser_that_regressed_keeps_what_is_stored(harness: Harness) -> None:
    who = subject("regress")
    applied = await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
    version = applied.version

    def broken(delivery: StoredDelivery) -> NormalizedEvent:
        return NormalizedEvent(EventKind.UNPARSEABLE, delivery.type, error="new parser bug")

    results = [
        r
        async for progress in ReplayDeliveries(
            harness.store,
            ReplayDelivery(
                harness.store,
                DeliveryRules(harness.running.app.catalog, harness.clock),
                NoChanges(),
                broken,
            ),
        )(DeliverySelector(subject=who))
        for r in progress.batch
    ]
    assert [(r.result.outcome, r.result.notes) for r in results] == [
        ("APPLIED", ("new parser bug",))
    ]
    ent = await entitlements(harness, who)
    assert (ent.plan, ent.version) == ("pro", version)
    history = await harness.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=harness.auth
    )
    deliveries = [e for e in history.entries if e.kind == sync_pb.HISTORY_KIND_DELIVERY]
    assert [e.outcome for e in deliveries] == [sync_pb.APPLIED]


async def test_concurrent_replays_apply_each_delivery_once(harness: Harness) -> None:
    at = now_ms() - MINUTE
    people = [subject(f"conc{n}") for n in range(20)]
    for who in people:
        await store_as_an_older_parser_did(
            harness, event("item_active_pro_month", at_ms=at, subject=who)
        )
    runs = await asyncio.gather(*(replay(harness, unparseable=True) for _ in range(3)))
    changed = [r.event_id for run in runs for r in run if r.changed]
    assert len(changed) == len(set(changed)) == len(people)  # each applied by one run only
    for who in people:
        assert await plan_of(harness, who) == "pro"
        assert await plan_change_count(harness, who) == 1
