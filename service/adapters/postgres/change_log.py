"""The change log: its horizon (only this service's writers hold it), what the follower and
resuming watchers read, and pruning."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import asyncpg

from service.adapters.postgres.base import (
    Conn,
    StoreBase,
)
from service.application.records import ChangeBatch

# The change log's horizon: no change below it can still commit. Only this service's own
# writers can hold it back: transactions that hold a lock on one of its tables in this
# database (a writer locks the table before its first write gives it a transaction id). A
# transaction of another database, or a session that never touched these tables, cannot
# stall the stream (it used to: the cluster-wide snapshot xmin). 32-bit xids from pg_locks are
# widened to xid8 as the nearest to the snapshot's xmax (within 2^31 either way, which
# wraparound protection guarantees): an in-flight xid is below xmax, and one assigned after the
# snapshot was taken is at or above it (it once counted as the previous epoch: a negative
# horizon, which stalled every follower at its position while it re-read ever more rows).
#
# A transaction running at the snapshot whose id's lock pg_locks does not list holds the
# horizon too, whoever's it is: PostgreSQL gives a transaction its id (and snapshots count it
# as running) a moment before it takes the lock on that id, so in that moment it cannot be
# told apart. Read as not ours, a writer of ours caught there was skipped for good: its
# change, committed later below the position the stream had moved to, was never streamed
# (seen once in 10 000 overrides in `make bench` of 2026-12-08: a notification never sent).
# pg_locks is read once, so both questions are asked of the same reading.
WIDEN = """(snap.xmax + (((w.xid32 - (snap.xmax & 4294967295) + 2147483648) % 4294967296
                      + 4294967296) % 4294967296) - 2147483648)"""
# The snapshot: its xmax and the transactions it counts as running (as bigint).
LIVE_SNAPSHOT = """SELECT pg_snapshot_xmax(s)::text::bigint AS xmax,
       ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) x) AS running
  FROM pg_current_snapshot() s"""
LIVE_LOCKS = """SELECT locktype, virtualtransaction, database, relation, transactionid, mode,
       granted FROM pg_locks"""
OUR_TABLES = ("subjects", "deliveries", "change_log", "items", "grants", "change_log_state")


def horizon_sql(snapshot: str = LIVE_SNAPSHOT, locks: str = LIVE_LOCKS) -> str:
    """(xmax, horizon) over a snapshot and a reading of the locks (a test gives its own)."""
    tables = ", ".join(f"'{t}'" for t in OUR_TABLES)
    return f"""
WITH snap AS ({snapshot}),
locks AS MATERIALIZED ({locks}),
ours AS (
    SELECT DISTINCT virtualtransaction FROM locks
     WHERE locktype = 'relation'
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND relation = ANY(ARRAY[{tables}]::regclass[])),
writers AS (
    SELECT x.transactionid::text::bigint AS xid32
      FROM locks x JOIN ours USING (virtualtransaction)
     WHERE x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock' AND x.granted),
unlisted AS (
    SELECT r.xid FROM snap, unnest(snap.running) AS r(xid)
     WHERE NOT EXISTS (SELECT 1 FROM locks l
                        WHERE l.locktype = 'transactionid'
                          AND l.transactionid::text::bigint = r.xid % 4294967296))
SELECT snap.xmax,
       LEAST(snap.xmax, (SELECT min({WIDEN}) FROM writers w),
             (SELECT min(xid) FROM unlisted)) AS horizon
  FROM snap
"""


_HORIZON = horizon_sql()


# What tells one change log from another (SPEC §10.5). `log_id` is made with the log; a
# dropped and recreated database has a new one and a new database oid; a logical restore
# (pg_restore, even --clean into the same database) recreates change_log_state, so its
# table oid changes though `log_id` comes back; a physical restore or a promoted standby is on
# a new timeline; another cluster has another system identifier.
_IDENTITY = """
SELECT s.log_id::text AS log_id,
       (SELECT oid FROM pg_database WHERE datname = current_database())::bigint AS db,
       'change_log_state'::regclass::oid::bigint AS tbl,
       (SELECT system_identifier FROM pg_control_system())::text AS sysid,
       (SELECT timeline_id FROM pg_control_checkpoint())::bigint AS timeline
  FROM change_log_state s
"""
# Where the pg_control functions are not granted (some managed services), without them.
_IDENTITY_UNPRIVILEGED = """
SELECT s.log_id::text AS log_id,
       (SELECT oid FROM pg_database WHERE datname = current_database())::bigint AS db,
       'change_log_state'::regclass::oid::bigint AS tbl, '' AS sysid, 0::bigint AS timeline
  FROM change_log_state s
"""


async def _changes_between(
    conn: Conn, position: int, upper: int, subjects: Sequence[str] | None, limit: int
) -> list[tuple[int, int, str]]:
    rows = await conn.fetch(
        """SELECT txid::text::bigint AS txid, version, subject FROM change_log
            WHERE txid >= $1::bigint::text::xid8 AND txid < $2::bigint::text::xid8
              AND ($3::text[] IS NULL OR subject = ANY($3::text[]))
            ORDER BY txid, version LIMIT $4""",
        position,
        upper,
        list(subjects) if subjects else None,
        limit,
    )
    return [(int(r["txid"]), int(r["version"]), r["subject"]) for r in rows]


class ChangeLogStore(StoreBase):
    async def change_log_bounds(self) -> tuple[int, int]:
        """(pruned_below, ceiling) as stream positions (transaction ids): positions below
        `pruned_below` are gone; no position above `ceiling` exists yet."""

        async def work(conn: Conn) -> tuple[int, int]:
            row = await conn.fetchrow(
                """SELECT pruned_below::text::bigint AS pruned,
                          pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS ceiling
                     FROM change_log_state"""
            )
            assert row is not None
            return int(row["pruned"]), int(row["ceiling"])

        return await self._run(work)

    async def change_log_identity(self) -> str:
        """This change log's identity: equal positions of two logs with different identities
        mean nothing to each other (a wiped, replaced or restored database)."""

        async def work(conn: Conn) -> str:
            try:
                row = await conn.fetchrow(_IDENTITY)
            except asyncpg.InsufficientPrivilegeError:
                row = await conn.fetchrow(_IDENTITY_UNPRIVILEGED)
            assert row is not None
            parts = "/".join(str(row[k]) for k in ("log_id", "db", "tbl", "sysid", "timeline"))
            return hashlib.sha256(parts.encode()).hexdigest()[:32]

        return await self._run(work)

    async def change_log_horizon(self) -> tuple[int, int]:
        """(horizon, xmax): every change below `horizon` is final; `xmax` is the next
        transaction id (everything assigned before this call is below it)."""

        async def work(conn: Conn) -> tuple[int, int]:
            row = await conn.fetchrow(_HORIZON)
            assert row is not None
            return int(row["horizon"]), int(row["xmax"])

        return await self._run(work)

    async def follow_changes(self, position: int, limit: int) -> ChangeBatch:
        """Final changes at or after `position`, oldest first (the replica's one follower).

        Two statements, in this order: the horizon first, then the rows in a later snapshot,
        so a writer that ends between the two is seen in the second (never skipped)."""

        async def work(conn: Conn) -> ChangeBatch:
            row = await conn.fetchrow(_HORIZON)
            assert row is not None
            horizon, xmax = int(row["horizon"]), int(row["xmax"])
            changes = await _changes_between(conn, position, horizon, None, limit)
            if len(changes) == limit:  # that transaction's rows come again: harmless
                return ChangeBatch(changes, changes[-1][0], xmax, complete=False)
            return ChangeBatch(changes, max(position, horizon), xmax, complete=True)

        return await self._run(work)

    async def changes_between(
        self, position: int, upper: int, subjects: Sequence[str] | None, limit: int
    ) -> tuple[list[tuple[int, int, str]], int]:
        """Changes with `position` <= txid < `upper` (already final), oldest first, and the
        position to continue from (a resuming watcher catching up to the follower)."""

        async def work(conn: Conn) -> tuple[list[tuple[int, int, str]], int]:
            changes = await _changes_between(conn, position, upper, subjects, limit)
            if len(changes) == limit:
                return changes, changes[-1][0]
            return changes, max(position, upper)

        return await self._run(work)

    async def prune_change_log(self, retention_seconds: float) -> int:
        """Drop change-log rows older than the retention; returns how many went."""

        async def work(conn: Conn) -> int:
            async with conn.transaction():
                row = await conn.fetchrow(
                    """WITH gone AS (
                           DELETE FROM change_log
                            WHERE changed_at < now() - make_interval(secs => $1)
                        RETURNING txid)
                       SELECT count(*) AS n, max(txid)::text::bigint AS top FROM gone""",
                    retention_seconds,
                )
                assert row is not None
                if row["top"] is not None:
                    await conn.execute(
                        """UPDATE change_log_state SET pruned_below =
                               GREATEST(pruned_below, ($1::bigint + 1)::text::xid8)""",
                        row["top"],
                    )
                return int(row["n"])

        return await self._run(work)
