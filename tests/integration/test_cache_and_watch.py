"""The server cache (LRU, valid_until, LISTEN/NOTIFY invalidation across replicas) and the
WatchEntitlements stream (resume without gaps, OUT_OF_RANGE past retention)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from entitlements.v1 import entitlement_service_pb2 as pb
from tests.conftest import Harness, start_harness
from tests.integration.test_api_errors import proxied
from tests.support import Clock, event, now_ms
from tests.support.rpc import apply, can_use, plan_of, subject

pytestmark = pytest.mark.integration

DAY = 86_400_000


@contextlib.asynccontextmanager
async def replica(dsn: str, clock: Clock) -> AsyncIterator[Harness]:
    gen = start_harness(dsn, clock)
    h = await anext(gen)
    try:
        await wait_live(h)
        yield h
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(gen)


async def wait_live(h: Harness) -> None:
    cache = h.running.cache
    assert cache is not None
    for _ in range(200):
        if cache.live:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("change listener never connected")


async def test_change_on_one_replica_reaches_the_others_cache(
    harness: Harness, database_url: str
) -> None:
    who = subject("replica")
    async with replica(database_url, harness.clock) as b:
        await wait_live(harness)
        cache_b = b.running.cache
        assert cache_b is not None
        assert (await can_use(b, who, "dataExport")).plan == "free"
        hits = cache_b.hits
        assert (await can_use(b, who, "dataExport")).plan == "free"
        assert cache_b.hits == hits + 1  # the second answer came from the cache
        await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
        for _ in range(200):
            if (await can_use(b, who, "dataExport")).allowed:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("replica B kept serving the stale answer")


async def test_read_your_writes_on_the_same_replica(harness: Harness) -> None:
    await wait_live(harness)
    who = subject("ryw")
    assert await plan_of(harness, who) == "free"
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
    assert await plan_of(harness, who) == "pro"  # no waiting for the NOTIFY


async def test_cached_answer_expires_exactly_at_valid_until(harness: Harness) -> None:
    await wait_live(harness)
    t = now_ms()
    who = subject("expiry")
    await apply(harness, event("item_active_pro_month", at_ms=t - DAY, subject=who))
    canceled = event("item_canceled_pro", at_ms=t - DAY, subject=who, period_end=t + DAY)
    canceled["timestamp"] = t
    await apply(harness, canceled)
    cache = harness.running.cache
    assert cache is not None
    harness.clock.freeze(t + DAY - 1)
    first = await can_use(harness, who, "dataExport")
    assert first.allowed and first.valid_until.ToMilliseconds() == t + DAY
    hits = cache.hits
    harness.clock.freeze(t + DAY)
    after = await can_use(harness, who, "dataExport")
    assert not after.allowed and after.plan == "free" and not after.HasField("valid_until")
    assert cache.hits == hits + 1  # re-resolved from the cached state, no stale answer


async def test_cache_is_bounded_lru(harness: Harness) -> None:
    await wait_live(harness)
    cache = harness.running.cache
    assert cache is not None
    cache.max_subjects = 5
    for i in range(12):
        await can_use(harness, f"user_lru_{i}", "aiInsights")
    assert len(cache) == 5


async def test_listener_loss_drops_and_bypasses_the_cache(database_url: str, clock: Clock) -> None:
    async with proxied(database_url) as (proxy, dsn), replica(dsn, clock) as h:
        cache = h.running.cache
        assert cache is not None
        await can_use(h, "user_drop", "aiInsights")
        assert len(cache) == 1
        await proxy.cut()
        for _ in range(300):
            if not cache.live:
                break
            await asyncio.sleep(0.01)
        assert not cache.live and len(cache) == 0
        await proxy.start()
        await wait_live(h)
        assert (await can_use(h, "user_drop", "aiInsights")).allowed


async def test_cache_off_answers_the_same(database_url: str, clock: Clock) -> None:
    from pathlib import Path

    from service.adapters.postgres.store import Store
    from service.config import ServiceSettings, load_catalog
    from service.entrypoints.server import start_server

    catalog = load_catalog(None)
    store = await Store.open(database_url)
    settings = ServiceSettings(
        database_url, "127.0.0.1:0", None, None, Path(".data"), cache_enabled=False
    )
    running = await start_server(settings, catalog, store, clock)
    try:
        assert running.cache is None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc

            stub = pb_grpc.EntitlementServiceStub(channel)
            r = await stub.CanUse(pb.CanUseRequest(subject="user_nocache", feature="aiInsights"))
            assert r.allowed and r.plan == "free"
    finally:
        await running.stop()


async def _collect(
    stream: grpc.aio.UnaryStreamCall[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse],
    n: int,
) -> list[pb.WatchEntitlementsResponse]:
    out: list[pb.WatchEntitlementsResponse] = []
    for _ in range(n):
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, pb.WatchEntitlementsResponse)
        out.append(message)
    return out


async def test_watch_streams_changes_and_resumes_without_gaps(harness: Harness) -> None:
    a, b = subject("wa"), subject("wb")
    stream = harness.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest())
    marker = (await _collect(stream, 1))[0]
    assert marker.subject == ""
    start = marker.version
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=a))
    first = (await _collect(stream, 1))[0]
    assert (first.subject, first.entitlements.plan) == (a, "pro") and first.version > start
    stream.cancel()

    # Changes while disconnected: a resumed watch gets every one, in commit order.
    t = now_ms()
    await apply(harness, event("item_active_pro_month", at_ms=t, subject=b))
    await apply(harness, event("item_ended_pro", at_ms=t, subject=a, timestamp_ms=t + 5))
    await apply(harness, event("item_active_lifetime", at_ms=t, subject=b))
    resumed = harness.entitlements.WatchEntitlements(
        pb.WatchEntitlementsRequest(since_version=first.version)
    )
    got = await _collect(resumed, 4)
    resumed.cancel()
    assert [m.subject for m in got] == [b, a, b, ""]
    assert [m.entitlements.plan for m in got[:3]] == ["lifetime", "free", "lifetime"]
    versions = [m.version for m in got]
    assert versions == sorted(versions)

    # A subject filter.
    only_b = harness.entitlements.WatchEntitlements(
        pb.WatchEntitlementsRequest(subjects=[b], since_version=start)
    )
    got_b = await _collect(only_b, 3)
    only_b.cancel()
    assert [m.subject for m in got_b] == [b, b, ""]


async def test_watch_resume_point_outside_the_log_is_out_of_range(harness: Harness) -> None:
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=subject("oor")))
    _, ceiling = await harness.store.change_log_bounds()
    ahead = harness.entitlements.WatchEntitlements(
        pb.WatchEntitlementsRequest(since_version=ceiling + 1000)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _collect(ahead, 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    await asyncio.sleep(0.01)
    assert await harness.store.prune_change_log(0) >= 1
    old = harness.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest(since_version=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _collect(old, 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "re-sync" in (err.value.details() or "")
