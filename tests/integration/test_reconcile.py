"""Reconciliation against a fake Clerk Backend API on loopback: repairs lost webhooks, never
lets an older snapshot override a newer webhook, is polite to a rate-limited API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from service.adapters.clerk_api import ClerkApi, ClerkApiError, ClerkApiSettings
from tests.conftest import Harness, _truncate, start_harness
from tests.support import Clock, event, now_ms
from tests.support.fake_clerk import SECRET_KEY, FakeClerk, plan, serving
from tests.support.rpc import apply, plan_of, subject

pytestmark = pytest.mark.integration

MINUTE = 60_000


def item(name: str, who: str, at_ms: int, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = event(name, at_ms=at_ms, subject=who)["data"]
    data.update(overrides)
    return data


def settings(fake: FakeClerk, **kw: Any) -> ClerkApiSettings:
    return ClerkApiSettings(secret_key=SECRET_KEY, base_url=fake.url, backoff_seconds=0.05, **kw)


@pytest.fixture
async def fake() -> AsyncIterator[FakeClerk]:
    async with serving(FakeClerk()) as f:
        yield f


@pytest.fixture
async def rh(database_url: str, clock: Clock, fake: FakeClerk) -> AsyncIterator[Harness]:
    await _truncate(database_url)
    async for h in start_harness(database_url, clock, clerk=settings(fake)):
        yield h


async def reconcile(
    h: Harness, *subjects: str, all: bool = False
) -> list[sync_pb.ReconcileResponse]:
    call = h.sync.Reconcile(
        sync_pb.ReconcileRequest(subjects=list(subjects), all=all), metadata=h.auth
    )
    return [message async for message in call]


def results(messages: list[sync_pb.ReconcileResponse]) -> dict[str, sync_pb.SubjectReconciliation]:
    return {r.subject: r for m in messages for r in m.results}


async def test_lost_item_active_is_repaired(rh: Harness, fake: FakeClerk) -> None:
    who = subject("lost")
    t0 = now_ms() - 10 * MINUTE
    await apply(rh, event("subscription_created_free", at_ms=t0, subject=who))
    assert await plan_of(rh, who) == "free"
    # subscriptionItem.active for pro never arrived; Clerk's API knows it.
    t1 = t0 + 5 * MINUTE
    free = event("subscription_created_free", at_ms=t0, subject=who)["data"]["items"][0]
    fake.subscription_for(
        who,
        [dict(free, status="ended"), item("item_active_pro_month", who, t1)],
        updated_at=t1,
    )
    r = results(await reconcile(rh, who))[who]
    assert r.status == sync_pb.RECONCILE_STATUS_REPAIRED
    assert (r.previous_plan, r.plan) == ("free", "pro") and r.event_id.startswith("rcn_")
    assert any("missing" in d for d in r.differences)
    assert await plan_of(rh, who) == "pro"
    # Recorded with its source, and a second pass finds nothing to do.
    history = await rh.sync.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=who), metadata=rh.auth
    )
    synthetic = [e for e in history.entries if e.event_id == r.event_id]
    assert {e.kind for e in synthetic} == {
        sync_pb.HISTORY_KIND_DELIVERY,
        sync_pb.HISTORY_KIND_PLAN_CHANGE,
    }
    assert [e.source for e in synthetic if e.kind == sync_pb.HISTORY_KIND_DELIVERY] == ["reconcile"]
    again = results(await reconcile(rh, who))[who]
    assert again.status == sync_pb.RECONCILE_STATUS_IN_SYNC and again.plan == "pro"


async def test_older_snapshot_never_overrides_newer_webhook(rh: Harness, fake: FakeClerk) -> None:
    who = subject("newer")
    t1 = now_ms() - 10 * MINUTE
    await apply(rh, event("item_active_pro_month", at_ms=t1, subject=who))
    # The cancel webhook (t2) is applied; Clerk's API still answers a snapshot from before it.
    t2 = t1 + 5 * MINUTE
    await apply(rh, event("item_canceled_pro", at_ms=t2, subject=who))
    before = (await rh.entitlements.GetEntitlements(_ent(who))).version
    fake.subscription_for(who, [item("item_active_pro_month", who, t1)], updated_at=t1 + MINUTE)
    r = results(await reconcile(rh, who))[who]
    assert r.status == sync_pb.RECONCILE_STATUS_SNAPSHOT_OLDER
    ent = await rh.entitlements.GetEntitlements(_ent(who))
    assert ent.version == before and ent.plan == "pro"  # still canceled-until-period-end
    stored = await rh.store.load_states([who])
    assert [i.status.value for i in stored[who].items] == ["canceled"]


def _ent(who: str) -> pb.GetEntitlementsRequest:
    return pb.GetEntitlementsRequest(subject=who)


async def test_all_known_subjects_and_statuses(rh: Harness, fake: FakeClerk) -> None:
    t = now_ms() - MINUTE
    in_sync, missing, gone = subject("sync"), subject("gone"), subject("ended")
    for who in (in_sync, missing, gone):
        await apply(rh, event("item_active_pro_month", at_ms=t, subject=who))
    fake.subscription_for(in_sync, [item("item_active_pro_month", in_sync, t)], updated_at=t)
    # An item still active here but no longer listed at Clerk has ended there.
    fake.subscription_for(gone, [], updated_at=t + 1000)
    await rh.sync.GrantPlan(
        sync_pb.GrantPlanRequest(subject="acct_legacy_42", plan="pro", reason="legacy account"),
        metadata=rh.auth,
    )
    messages = await reconcile(rh, all=True)
    by_subject = results(messages)
    assert messages[-1].done == messages[-1].total == 4
    assert by_subject[in_sync].status == sync_pb.RECONCILE_STATUS_IN_SYNC
    assert by_subject[missing].status == sync_pb.RECONCILE_STATUS_NOT_FOUND
    assert by_subject["acct_legacy_42"].status == sync_pb.RECONCILE_STATUS_SKIPPED
    assert by_subject[gone].status == sync_pb.RECONCILE_STATUS_REPAIRED
    assert await plan_of(rh, gone) == "free" and await plan_of(rh, missing) == "pro"


async def test_429_then_200_is_retried_after_retry_after(fake: FakeClerk) -> None:
    who = subject("limited")
    fake.subscription_for(who, [], updated_at=now_ms())
    fake.scripted = [(429, {"Retry-After": "1"})]
    async with ClerkApi(settings(fake)) as api:
        answer = await api.subscription(who)
    assert answer is not None and answer["payer"]["user_id"] == who
    first, second = fake.requests_to(who)
    assert second.at - first.at >= 0.95  # waited as told, not hammering
    assert api.rate_limited == 1 and api.requests == 2


async def test_transient_errors_retried_auth_errors_not(fake: FakeClerk) -> None:
    who = subject("flaky")
    fake.subscription_for(who, [], updated_at=now_ms())
    fake.scripted = [(502, {}), (503, {})]
    async with ClerkApi(settings(fake)) as api:
        assert await api.subscription(who) is not None
    assert len(fake.requests_to(who)) == 3
    wrong = ClerkApiSettings(secret_key="sk_test_wrong", base_url=fake.url)
    async with ClerkApi(wrong) as api:
        with pytest.raises(ClerkApiError) as info:
            await api.subscription(who)
    assert not info.value.retryable and "CLERK_SECRET_KEY" in str(info.value)
    assert len(fake.requests_to(who)) == 4  # one attempt: a 401 is not retried


async def test_api_down_fails_the_subject_and_changes_nothing(rh: Harness, fake: FakeClerk) -> None:
    who = subject("down")
    t = now_ms() - MINUTE
    await apply(rh, event("item_active_pro_month", at_ms=t, subject=who))
    fake.scripted = [(500, {})] * 5
    r = results(await reconcile(rh, who))[who]
    assert r.status == sync_pb.RECONCILE_STATUS_FAILED and "after 5 attempts" in r.detail
    assert await plan_of(rh, who) == "pro"


async def test_without_secret_key_reconcile_is_failed_precondition(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await reconcile(harness, "user_x")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CLERK_SECRET_KEY" in (info.value.details() or "")


async def test_reconcile_arguments_are_validated(rh: Harness) -> None:
    for request in (
        sync_pb.ReconcileRequest(),
        sync_pb.ReconcileRequest(subjects=["user_a"], all=True),
        sync_pb.ReconcileRequest(subjects=[" bad "]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [m async for m in rh.sync.Reconcile(request, metadata=rh.auth)]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_schedule_repairs_without_being_asked(
    database_url: str, clock: Clock, fake: FakeClerk
) -> None:
    await _truncate(database_url)
    who = subject("sched")
    t = now_ms() - MINUTE
    async for h in start_harness(database_url, clock):
        await apply(h, event("item_active_pro_month", at_ms=t, subject=who))
    conn = await asyncpg.connect(database_url)
    await conn.execute("UPDATE reconcile_schedule SET next_run_at = now()")
    await conn.close()
    fake.subscription_for(who, [item("item_canceled_pro", who, t + 1000)], updated_at=t + 1000)
    async for h in start_harness(
        database_url, clock, clerk=settings(fake), reconcile_interval_seconds=3600
    ):
        for _ in range(100):
            stored = (await h.store.load_states([who]))[who]
            if [i.status.value for i in stored.items] == ["canceled"]:
                break
            await asyncio.sleep(0.05)
        assert [i.status.value for i in stored.items] == ["canceled"]


async def test_catalog_check_lists_both_directions(rh: Harness, fake: FakeClerk) -> None:
    fake.plans = [
        plan("free_user", "cplan_1", "Free"),
        plan("pro", "cplan_2", "Pro"),
        plan("team", "cplan_3", "Team"),
        *[plan(f"legacy_{n}", f"cplan_l{n}", "Legacy") for n in range(150)],  # two pages
    ]
    r = await rh.sync.CheckCatalog(sync_pb.CheckCatalogRequest(), metadata=rh.auth)
    assert r.clerk_plans == 153
    assert "team" in [p.slug for p in r.unmapped_clerk_plans] and len(r.unmapped_clerk_plans) == 151
    assert "lifetime" in r.unknown_catalog_slugs and "pro" not in r.unknown_catalog_slugs


async def test_a_pass_stops_asking_an_api_that_keeps_failing(rh: Harness, fake: FakeClerk) -> None:
    t = now_ms() - MINUTE
    people = [subject(f"outage{n}") for n in range(12)]
    for who in people:
        await apply(rh, event("item_active_pro_month", at_ms=t, subject=who))
    fake.scripted = [(500, {})] * 1000
    by_subject = results(await reconcile(rh, *people))
    assert all(r.status == sync_pb.RECONCILE_STATUS_FAILED for r in by_subject.values())
    # At most four requests are in flight when the 20th failure in a row lands; then no more.
    assert 20 <= len(fake.seen) <= 20 + 4
    assert any("not asked" in r.detail for r in by_subject.values())
    for who in people:
        assert await plan_of(rh, who) == "pro"


async def test_429s_count_toward_giving_up(fake: FakeClerk) -> None:
    """An API that only answers 429 cannot hold a pass for ever: after `give_up_after` failed
    requests in a row (429s included) the client stops asking."""
    first, second = subject("limited_a"), subject("limited_b")
    for who in (first, second):
        fake.subscription_for(who, [], updated_at=now_ms())
    fake.scripted = [(429, {"Retry-After": "0"})] * 50
    async with ClerkApi(settings(fake, give_up_after=6)) as api:
        with pytest.raises(ClerkApiError):
            await api.subscription(first)
        with pytest.raises(ClerkApiError) as info:
            await api.subscription(second)
    assert "not asked" in str(info.value)
    assert api.requests == 6


async def test_an_oversized_answer_is_refused_not_buffered() -> None:
    from aiohttp import web

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"pad":"' + b"x" * (6 * 1024 * 1024) + b'"}')
        return response

    app = web.Application()
    app.router.add_get("/users/{id}/billing/subscription", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        api_settings = ClerkApiSettings(secret_key=SECRET_KEY, base_url=f"http://127.0.0.1:{port}")
        async with ClerkApi(api_settings) as api:
            with pytest.raises(ClerkApiError) as info:
                await api.subscription("user_big")
        assert "larger than" in str(info.value)
    finally:
        await runner.cleanup()
