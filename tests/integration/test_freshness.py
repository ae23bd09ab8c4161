"""A change stream you can trust (SPEC §9): a local answer is never older than `max_staleness`
— whatever holds a transaction open elsewhere, however the network path fails — idle watchers
cost no database work, and streams are limited and can require a read token."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_client import AsyncEntitlementsClient, EntitlementsClient, EntitlementsError
from tests.conftest import Harness, _truncate, rpc_code, start_harness
from tests.support import Clock, database_dsn, event, now_ms
from tests.support.rpc import apply, subject
from tests.support.stall_proxy import StallingProxy

pytestmark = pytest.mark.integration

READ_TOKEN = "read-token-" + "r" * 16


async def _pro_then_cached(h: Harness, client: AsyncEntitlementsClient, who: str) -> dict[str, Any]:
    active = event("item_active_pro_month", at_ms=now_ms() - 60_000, subject=who)
    await apply(h, active)
    async with asyncio.timeout(10):
        await client.wait_synced()
    assert await client.can_use(who, "dataExport")  # an RPC, then answered locally
    assert client.cache is not None and client.cache.fresh(who) is not None
    return active


def _ended(active: dict[str, Any], who: str) -> dict[str, Any]:
    ended = event("item_ended_pro", at_ms=now_ms(), subject=who)
    ended["data"]["id"] = active["data"]["id"]
    return ended


async def _eventually(condition: Any, seconds: float) -> float:
    """Seconds until `condition()` (awaited if need be) held; fails after `seconds`."""
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(seconds):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return asyncio.get_running_loop().time() - started
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _open_transaction(dsn: str, *statements: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN")
        for statement in statements:
            await conn.execute(statement)
        yield
    finally:
        await conn.close()  # ends (rolls back) the transaction


async def test_a_transaction_open_in_another_database_does_not_stall_changes(
    harness: Harness, pg_admin_dsn: str
) -> None:
    """`BEGIN; SELECT pg_current_xact_id();` in another database of the same server used to
    hold every watcher back (the cluster-wide snapshot xmin): the change now arrives at once."""
    other = f"ent_other_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{other}"')
    try:
        who = subject("otherdb")
        async with (
            AsyncEntitlementsClient(harness.target, local_cache=True, max_staleness=2) as client,
            _open_transaction(database_dsn(pg_admin_dsn, other), "SELECT pg_current_xact_id()"),
        ):
            active = await _pro_then_cached(harness, client, who)
            await apply(harness, _ended(active, who))
            took = await _eventually(lambda: client.cache.fresh(who).plan == "free", 2)  # type: ignore[union-attr]
            assert took < 1.0
            assert client.synced
            assert not await client.can_use(who, "dataExport")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        await admin.close()


async def test_a_session_of_our_database_that_never_touched_our_tables_does_not_stall(
    harness: Harness,
) -> None:
    who = subject("samedb")
    async with (
        AsyncEntitlementsClient(harness.target, local_cache=True, max_staleness=2) as client,
        _open_transaction(harness.store.dsn, "SELECT pg_current_xact_id()"),
    ):
        active = await _pro_then_cached(harness, client, who)
        await apply(harness, _ended(active, who))
        await _eventually(lambda: client.cache.fresh(who).plan == "free", 2)  # type: ignore[union-attr]


async def test_a_long_transaction_of_our_own_shows_as_lag_never_as_silent_staleness(
    harness: Harness,
) -> None:
    """A transaction that wrote to our tables holds the horizon: the change cannot be streamed
    yet, so the heartbeat's lag grows, the client stops answering locally within
    `max_staleness`, asks the service, and gets the new answer."""
    who = subject("ownlag")
    async with AsyncEntitlementsClient(harness.target, local_cache=True, max_staleness=2) as client:
        active = await _pro_then_cached(harness, client, who)
        async with _open_transaction(
            harness.store.dsn,
            "SELECT pg_current_xact_id()",
            "SELECT count(*) FROM subjects",  # it has read our tables: one of ours
        ):
            await apply(harness, _ended(active, who))
            await _eventually(lambda: not client.synced, 4)
            assert client.cache is not None and client.cache.fresh(who) is None
            assert not await client.can_use(who, "dataExport")  # asked the service: free
            assert harness.running.app.hub is not None and harness.running.app.hub.lag_ms() >= 1500
            # The metric shows it too (sampled once a second).
            await _eventually(
                lambda: (REGISTRY.get_sample_value("entitlements_watch_lag_seconds") or 0) >= 1.5, 2
            )
        await _eventually(lambda: client.synced, 5)  # the transaction ended: caught up
        assert client.cache.fresh(who).plan == "free"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_path_that_stops_carrying_packets_is_noticed_within_the_bound(
    harness: Harness, kind: str
) -> None:
    """A proxy between client and service stops forwarding but keeps every socket open: the
    client stops answering from its cache within `max_staleness` and raises instead of
    answering the old value."""
    proxy = StallingProxy("127.0.0.1", harness.running.port)
    await proxy.start()
    who = subject(f"stall_{kind}")
    await apply(harness, event("item_active_pro_month", at_ms=now_ms() - 60_000, subject=who))
    target = f"127.0.0.1:{proxy.port}"
    try:
        if kind == "async":
            async with AsyncEntitlementsClient(
                target, local_cache=True, max_staleness=2, timeout=1
            ) as client:
                async with asyncio.timeout(10):
                    await client.wait_synced()
                assert await client.can_use(who, "dataExport")
                proxy.stall()
                await _eventually(lambda: not client.synced, 3.5)
                with pytest.raises(EntitlementsError):
                    await client.can_use(who, "dataExport")
        else:

            def run() -> None:
                with EntitlementsClient(
                    target, local_cache=True, max_staleness=2, timeout=1
                ) as client:
                    assert client.wait_synced(10)
                    assert client.can_use(who, "dataExport")
                    asyncio.run_coroutine_threadsafe(_stall(proxy), loop).result()
                    deadline = loop.time() + 3.5
                    while client.synced and loop.time() < deadline:
                        time.sleep(0.02)
                    assert not client.synced
                    with pytest.raises(EntitlementsError):
                        client.can_use(who, "dataExport")

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(run)
    finally:
        await proxy.close()


async def _next(stream: Any) -> pb.WatchEntitlementsResponse:
    message = await stream.read()
    assert isinstance(message, pb.WatchEntitlementsResponse)
    return message


async def _stall(proxy: StallingProxy) -> None:
    proxy.stall()


async def test_idle_watchers_cost_no_database_work(harness: Harness) -> None:
    """200 streams watching a subject that never changes, while deliveries are ingested: the
    database work is the same as with no watcher at all (counted, not timed)."""
    store, hub = harness.store, harness.running.app.hub
    assert hub is not None

    async def ingest(n: int) -> int:
        """Database work for `n` deliveries, minus the follower's own reads."""
        calls, reads = store.calls, hub.reads
        for _ in range(n):
            await apply(
                harness, event("item_active_pro_month", at_ms=now_ms(), subject=subject("i"))
            )
        await asyncio.sleep(1.2)  # the follower streams them and every watcher beats
        return (store.calls - calls) - (hub.reads - reads)

    baseline = await ingest(20)
    quiet = subject("quiet")
    streams = [
        harness.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest(subjects=[quiet]))
        for _ in range(200)
    ]
    try:
        for stream in streams:
            assert not (await _next(stream)).subject  # caught up
        assert hub.streams == 200
        with_watchers = await ingest(20)
        assert with_watchers <= baseline + 2, (baseline, with_watchers)
    finally:
        for stream in streams:
            stream.cancel()


async def test_streams_over_the_limit_are_resource_exhausted(
    database_url: str, clock: Clock
) -> None:
    await _truncate(database_url)
    async for h in start_harness(
        database_url, clock, watch_max_streams=3, watch_max_streams_per_peer=2
    ):
        first = h.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest())
        second = h.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest())
        for stream in (first, second):
            assert not (await _next(stream)).subject
        third = h.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await third.read()
        assert rpc_code(err.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        hub = h.running.app.hub
        assert hub is not None
        await _eventually(lambda: hub.streams == 1, 5)  # noqa: B023
        again = h.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest())
        assert not (await _next(again)).subject  # a slot was freed
        again.cancel()
        second.cancel()


async def test_heartbeats_arrive_every_second_with_the_lag(harness: Harness) -> None:
    stream = harness.entitlements.WatchEntitlements(
        pb.WatchEntitlementsRequest(subjects=[subject("beat")])
    )
    loop = asyncio.get_running_loop()
    arrivals = []
    for _ in range(4):
        message = await stream.read()
        assert isinstance(message, pb.WatchEntitlementsResponse)
        assert not message.subject and message.HasField("server_time")
        assert message.lag.ToMilliseconds() < 1500
        arrivals.append(loop.time())
    stream.cancel()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) <= 1.3, gaps


async def test_read_token_guards_the_read_side(
    database_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _truncate(database_url)
    async for h in start_harness(database_url, clock, read_tokens=(READ_TOKEN,)):
        request = pb.CanUseRequest(subject="user_token", feature="aiInsights")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.entitlements.CanUse(request)
        assert rpc_code(err.value) is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.entitlements.CanUse(request, metadata=(("authorization", "Bearer wrong"),))
        assert rpc_code(err.value) is grpc.StatusCode.UNAUTHENTICATED
        watch = h.entitlements.WatchEntitlements(pb.WatchEntitlementsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await watch.read()  # an unauthenticated Watch lists nothing
        assert rpc_code(err.value) is grpc.StatusCode.UNAUTHENTICATED
        allowed = await h.entitlements.CanUse(
            request, metadata=(("authorization", f"Bearer {READ_TOKEN}"),)
        )
        assert allowed.allowed
        async with AsyncEntitlementsClient(h.target, token=READ_TOKEN, local_cache=True) as client:
            async with asyncio.timeout(10):
                await client.wait_synced()
            assert await client.can_use("user_token", "aiInsights")
        monkeypatch.setenv("ENTITLEMENTS_READ_TOKEN", f"{READ_TOKEN} next-token-{'n' * 16}")
        async with AsyncEntitlementsClient(h.target) as client:  # the token from the env
            assert await client.can_use("user_token", "aiInsights")
