"""The change log's horizon widens the 32-bit transaction ids of pg_locks to xid8 correctly,
including a writer whose id was assigned after the horizon's snapshot was taken (it was once
read as the previous epoch: a negative horizon that stalled every follower); it is held by a
writer of ours in flight, and by a running transaction whose id's lock is not listed yet (a
writer caught there was once skipped for good), not by one on other tables."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from service.adapters.postgres.change_log import WIDEN, horizon_sql
from service.adapters.postgres.store import Store
from tests.support import fresh_database

EPOCH = 2**32


@pytest.fixture
def dsn(pg_admin_dsn: str) -> Iterator[str]:
    with fresh_database(pg_admin_dsn) as url:
        yield url


@pytest.mark.parametrize(
    ("xmax", "xid32", "widened"),
    [
        (85_398, 85_390, 85_390),  # in flight: below xmax
        (85_398, 85_401, 85_401),  # assigned after the snapshot: at or above xmax, same epoch
        (EPOCH + 10, EPOCH - 5, EPOCH - 5),  # in flight from before the epoch turned
        (EPOCH + 10, 12, EPOCH + 12),  # after the snapshot, in the new epoch
        (3 * EPOCH + 2**31, 2**31 - 7, 3 * EPOCH + 2**31 - 7),
    ],
)
async def test_widening(dsn: str, xmax: int, xid32: int, widened: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        got = await conn.fetchval(
            f"""WITH snap AS (SELECT $1::bigint AS xmax), w AS (SELECT $2::bigint AS xid32)
                SELECT {WIDEN} FROM snap, w""",
            xmax,
            xid32,
        )
    finally:
        await conn.close()
    assert got == widened


# A reading of pg_locks, given row by row (the columns the horizon reads).
GIVEN_LOCKS = """SELECT * FROM unnest($3::text[], $4::text[], $5::oid[], $6::oid[], $7::bigint[],
                                $8::text[], $9::bool[])
         AS l(locktype, virtualtransaction, database, relation, transactionid, mode, granted)"""
GIVEN_SNAPSHOT = "SELECT $1::bigint AS xmax, $2::bigint[] AS running"
XMAX = 90_000


async def horizon_over(
    dsn: str, running: list[int], locks: list[tuple[str, str, bool, int | None]]
) -> int:
    """The horizon at snapshot (XMAX, `running`) over locks given as (locktype, virtual
    transaction, in this database on `subjects`, transaction id)."""
    await (await Store.open(dsn)).close()  # the tables the horizon names
    conn = await asyncpg.connect(dsn)
    try:
        here = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
        table = await conn.fetchval("SELECT 'subjects'::regclass::oid")
        row = await conn.fetchrow(
            horizon_sql(GIVEN_SNAPSHOT, GIVEN_LOCKS),
            XMAX,
            running,
            [kind for kind, _, _, _ in locks],
            [vxid for _, vxid, _, _ in locks],
            [here if ours else 1 for _, _, ours, _ in locks],
            [table if kind == "relation" else None for kind, _, _, _ in locks],
            [xid for _, _, _, xid in locks],
            [
                "ExclusiveLock" if kind == "transactionid" else "RowExclusiveLock"
                for kind, *_ in locks
            ],
            [True] * len(locks),
        )
    finally:
        await conn.close()
    assert row is not None and row["xmax"] == XMAX
    return int(row["horizon"])


async def test_nothing_running_the_horizon_is_xmax(dsn: str) -> None:
    assert await horizon_over(dsn, [], []) == XMAX


async def test_a_writer_of_ours_holds_the_horizon(dsn: str) -> None:
    locks = [("relation", "3/7", True, None), ("transactionid", "3/7", True, XMAX - 5)]
    assert await horizon_over(dsn, [XMAX - 5], locks) == XMAX - 5


async def test_a_transaction_on_other_tables_does_not(dsn: str) -> None:
    locks = [("relation", "4/2", False, None), ("transactionid", "4/2", False, XMAX - 5)]
    assert await horizon_over(dsn, [XMAX - 5], locks) == XMAX


async def test_a_running_transaction_whose_id_lock_is_not_listed_yet_holds_it(dsn: str) -> None:
    # Given its id a moment before it locks that id: it may be a writer of ours, caught between
    # the two (the change once skipped for good).
    locks = [("relation", "3/7", True, None), ("transactionid", "3/7", True, XMAX - 3)]
    assert await horizon_over(dsn, [XMAX - 8], []) == XMAX - 8
    assert await horizon_over(dsn, [XMAX - 8, XMAX - 3], locks) == XMAX - 8


async def test_the_live_horizon_sees_a_writer_of_ours_in_flight(dsn: str) -> None:
    await (await Store.open(dsn)).close()
    writer, reader = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with writer.transaction():
            await writer.execute("INSERT INTO subjects (subject) VALUES ('user_in_flight')")
            xid = await writer.fetchval("SELECT pg_current_xact_id()::text::bigint")
            row = await reader.fetchrow(horizon_sql())
            assert row is not None and row["horizon"] <= xid  # its change not yet final
        row = await reader.fetchrow(horizon_sql())
        assert row is not None and row["horizon"] == row["xmax"] > xid
    finally:
        await writer.close()
        await reader.close()
