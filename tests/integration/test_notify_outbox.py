"""The notification outbox on real PostgreSQL: two replicas never claim one delivery at once,
a subject's next delivery waits for the one before it, a lease that runs out (a replica killed
mid-send) gives the delivery back, failing deliveries are given up after the give-up time, and
one notifier scans at a time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from service.adapters.postgres.notifications import CLAIM
from service.adapters.postgres.store import Store
from service.application.notifications import Notice
from service.application.notify_delivery import Outcome, Settled
from tests.support import fresh_database

URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    with fresh_database(pg_admin_dsn) as url:
        yield url


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    s = await Store.open(dsn)
    try:
        yield s
    finally:
        await s.close()


async def rows(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def notice(subject: str, version: int) -> Notice:
    return Notice(subject, version, f"ent_{subject}_{version}", "{}", f"fp{version}", None)


async def queue(store: Store, notices: list[Notice]) -> None:
    async with store.scanning([URL]) as scan:
        assert scan is not None
        await scan.record(notices, [], 1)


async def test_replicas_claim_disjoint_heads_in_order_per_subject(store: Store) -> None:
    await queue(store, [notice(f"user_{i}", v) for v in (1, 2) for i in range(20)])
    a, b = await asyncio.gather(store.claim(URL, 15, 30), store.claim(URL, 15, 30))
    ids_a, ids_b = {c.id for c in a}, {c.id for c in b}
    assert not ids_a & ids_b  # never the same delivery to two replicas
    claimed = [*a, *b]
    assert len(claimed) == 20  # one head per subject: the version-2 ones wait
    assert {c.message_id.rsplit("_", 1)[1] for c in claimed} == {"1"}
    assert await store.claim(URL, 50, 30) == []  # all heads are leased
    await store.settle(URL, [Settled(c.id, Outcome.DELIVERED, 200, None, 0) for c in a], 3600)
    after = await store.claim(URL, 50, 30)
    assert {c.subject for c in after} == {c.subject for c in a}  # their version 2 is next
    assert {c.message_id.rsplit("_", 1)[1] for c in after} == {"2"}


async def test_an_expired_lease_gives_the_delivery_back(store: Store) -> None:
    await queue(store, [notice("user_lease", 1)])
    first = await store.claim(URL, 10, 0.2)  # "killed" mid-send: never settled
    assert len(first) == 1 and await store.claim(URL, 10, 0.2) == []
    await asyncio.sleep(0.3)
    again = await store.claim(URL, 10, 0.2)
    assert [c.id for c in again] == [first[0].id] and again[0].attempts == 2


async def test_retried_then_given_up_and_410_disables(store: Store, dsn: str) -> None:
    await queue(store, [notice("user_fail", 1), notice("user_gone", 1)])
    claimed = {c.subject: c for c in await store.claim(URL, 10, 30)}
    retries = [Settled(c.id, Outcome.RETRY, 503, None, 0.0) for c in claimed.values()]
    assert await store.settle(URL, retries, 3600) == 0  # retried: still pending
    found = await rows(dsn, "SELECT status FROM notify_deliveries WHERE subject = 'user_fail'")
    assert [r["status"] for r in found] == ["pending"]
    claimed = {c.subject: c for c in await store.claim(URL, 10, 30)}
    retry = Settled(claimed["user_fail"].id, Outcome.RETRY, None, "timeout", 0.0)
    gone = Settled(claimed["user_gone"].id, Outcome.GONE, 410, None, 0.0)
    assert await store.settle(URL, [retry, gone], 0.0) == 1  # past the give-up time: failed
    assert await store.claim(URL, 10, 30) == []  # the endpoint is disabled
    found = await rows(dsn, "SELECT subject, status, last_error FROM notify_deliveries ORDER BY 1")
    assert [(r["subject"], r["status"]) for r in found] == [
        ("user_fail", "failed"),
        ("user_gone", "pending"),
    ]
    assert found[0]["last_error"] == "timeout"


async def test_one_notifier_scans_at_a_time(store: Store) -> None:
    async with store.scanning([URL]) as first:
        assert first is not None
        async with store.scanning([URL]) as second:
            assert second is None  # another replica holds it: skipped, not waited for


async def test_a_claim_probes_each_pending_delivery_once_whatever_the_statistics(
    store: Store, dsn: str
) -> None:
    """The planner's trap the bench fell into: statistics from when the outbox was small
    (vacuumed, never analysed), then 20 000 deliveries queued in seconds. A claim planned as a
    join scanned every pending row once per candidate (10^8 rows, 30 M buffers, 10 s); it
    must stay linear: a bounded number of buffers per pending delivery."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")  # as a pooled one
        await queue(store, [notice(f"lat_{i}", 1) for i in range(20)])
        await conn.execute("UPDATE notify_deliveries SET status = 'delivered'")
        await conn.execute("VACUUM notify_deliveries")
        await queue(store, [notice(f"user_{i}", v) for v in (1, 2) for i in range(10_000)])
        await conn.execute(
            "UPDATE notify_deliveries SET next_attempt_at = now() + interval '30 seconds' "
            "WHERE id % 10 <> 0"
        )
        raw = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + CLAIM, URL, 32, 30.0)
    finally:
        await conn.close()
    top = json.loads(raw)[0]["Plan"]
    assert top["Actual Rows"] == 32
    assert top["Shared Hit Blocks"] + top.get("Shared Read Blocks", 0) < 200_000
