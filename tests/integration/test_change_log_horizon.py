"""The change log's horizon widens the 32-bit transaction ids of pg_locks to xid8 correctly,
including a writer whose id was assigned after the horizon's snapshot was taken (it was once
read as the previous epoch: a negative horizon that stalled every follower)."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest

from service.adapters.postgres.change_log import WIDEN
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
