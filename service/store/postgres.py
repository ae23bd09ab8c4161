"""The PostgreSQL store: one transaction per delivery, ordering guarded inside the UPDATE.

Every verified delivery is recorded by its svix-id in the same transaction as the state change
it causes, so a retry is a DUPLICATE and a crash between the two is impossible. The subject row
is locked first, so concurrent deliveries for one subject serialise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from service.domain.bounds import echo, storable_text, within_window
from service.domain.catalog import Catalog
from service.domain.errors import Unavailable
from service.domain.events import EventKind, ItemStatus, NormalizedEvent
from service.domain.past_due import PastDueTrack
from service.domain.privacy import scrub_payload
from service.domain.rebuild import ITEM_STATE_COLUMNS
from service.domain.resolution import (
    Entitlements,
    Grant,
    ItemState,
    SubjectState,
    item_after_stale,
    item_after_update,
    resolve,
    with_items,
)
from service.store.migrate import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
if TYPE_CHECKING:
    Conn = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.pool.PoolConnectionProxy


class StoreUnavailable(Unavailable):
    """The database cannot be reached or did not answer in time; the caller may retry."""

    def public_message(self) -> str:
        return "database unavailable; retry later"


class _ItemOwnedElsewhere(Exception):
    """A delivery would move an item to another subject: it is recorded IGNORED instead."""


# Text columns of a delivery recorded without its effects (type, notes) are cut to this.
MAX_STORED_TEXT = 1000


class Outcome(StrEnum):
    """What became of a delivery (stored as its text; the wire enum has the same names)."""

    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    STALE = "STALE"
    IGNORED = "IGNORED"
    UNPARSEABLE = "UNPARSEABLE"
    PENDING = "PENDING"


@dataclass(frozen=True)
class ApplyResult:
    outcome: str
    subject: str | None
    plan: str | None
    previous_plan: str | None
    version: int
    notes: tuple[str, ...] = ()
    recorded: bool = False  # the delivery row already carries the outcome


@dataclass(frozen=True)
class HistoryRow:
    kind: str  # "delivery" | "plan_change"
    recorded_at: datetime
    event_id: str | None
    type: str | None
    outcome: str | None
    event_ms: int | None
    from_plan: str | None
    to_plan: str | None
    note: str
    source: str | None = None


@dataclass(frozen=True)
class StoredDelivery:
    """A delivery as stored: enough to normalise and apply it again."""

    event_id: str
    type: str
    payload: bytes
    outcome: str
    received_at: datetime
    signed_at_ms: int | None
    source: str

    @property
    def fallback_ms(self) -> int:
        """The event time used when the payload carries none (as on first delivery)."""
        if self.signed_at_ms is not None:
            return self.signed_at_ms
        return int(self.received_at.timestamp() * 1000)


@dataclass(frozen=True)
class DeliverySelector:
    """Which stored deliveries a replay or verification walks."""

    subject: str | None = None
    unparseable: bool = False

    def where(self, first_arg: int) -> str:
        if self.subject is not None:
            return f"subject = ${first_arg}"
        if self.unparseable:
            return "outcome = 'UNPARSEABLE'"
        return "true"

    @property
    def args(self) -> tuple[Any, ...]:
        return (self.subject,) if self.subject is not None else ()


@dataclass(frozen=True)
class ReplayResult:
    delivery: StoredDelivery
    event: NormalizedEvent
    result: ApplyResult

    @property
    def changed(self) -> bool:
        """Whether this replay changed stored state (rather than finding its effect there)."""
        return self.result.recorded


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
)
_PING_FAILURES: tuple[type[BaseException], ...] = (StoreUnavailable, *_UNAVAILABLE_ERRORS)
_RETRYABLE_TX_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)

_ITEM_COLUMNS = (
    "i.item_id, i.status, i.plan_slug, i.plan_id, i.period_end_ms, i.past_due_at_ms, "
    "i.event_ms, i.ever_active, i.last_ok_ms, i.last_ok_rank, i.past_due_marks"
)

# The ordering guard lives in the UPDATE's WHERE: the row changes only when the incoming
# (event time, lifecycle rank, digest) is strictly greater than the stored one. An item belongs
# to the subject that first held it: a row of another subject is never moved.
_UPSERT_ITEM = """
INSERT INTO items (item_id, subject, status, plan_slug, plan_id, period_end_ms, past_due_at_ms,
                   is_default, ever_active, event_ms, lifecycle_rank, digest, source_event_id,
                   last_ok_ms, last_ok_rank, past_due_marks)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (item_id) DO UPDATE SET
    status = EXCLUDED.status, plan_slug = EXCLUDED.plan_slug,
    plan_id = EXCLUDED.plan_id, period_end_ms = EXCLUDED.period_end_ms,
    past_due_at_ms = EXCLUDED.past_due_at_ms, is_default = EXCLUDED.is_default,
    ever_active = items.ever_active OR EXCLUDED.ever_active,
    event_ms = EXCLUDED.event_ms, lifecycle_rank = EXCLUDED.lifecycle_rank,
    digest = EXCLUDED.digest, source_event_id = EXCLUDED.source_event_id,
    last_ok_ms = EXCLUDED.last_ok_ms, last_ok_rank = EXCLUDED.last_ok_rank,
    past_due_marks = EXCLUDED.past_due_marks,
    updated_at = now()
WHERE items.subject = EXCLUDED.subject
  AND (items.event_ms, items.lifecycle_rank, items.digest)
    < (EXCLUDED.event_ms, EXCLUDED.lifecycle_rank, EXCLUDED.digest)
RETURNING item_id
"""

# An older event still counts as an observation: `ever_active` only grows (a lifetime item that
# was ever active stays entitling whatever the order) and past-due episodes are tracked.
_OBSERVE_STALE = """
UPDATE items SET ever_active = $3, last_ok_ms = $4, last_ok_rank = $5, past_due_marks = $6,
                 past_due_at_ms = $7
 WHERE item_id = $1 AND subject = $2
"""


CHANGES_CHANNEL = "entitlements_changed"

# One statement: take the subject's next version, record it, log the change (stream position:
# this transaction's id) and NOTIFY "<version>:<subject>", delivered to every replica at commit.
# The plan-change history row and the delivery's outcome ride along, to save round trips.
_COMMIT_CHANGE = """
WITH v AS (SELECT nextval('entitlement_version_seq') AS version),
     upd AS (
        UPDATE subjects SET version = v.version, plan = $2, updated_at = now()
          FROM v WHERE subject = $1 RETURNING v.version),
     log AS (INSERT INTO change_log (version, subject)
             SELECT version, $1 FROM upd RETURNING version),
     history AS (
        INSERT INTO plan_changes (subject, from_plan, to_plan, version, cause_event_id, cause_type)
        SELECT $1, $4, $2, version, $5, $6 FROM log WHERE $4 <> $2),
     delivery AS (
        UPDATE deliveries SET outcome = $7, notes = $8, subject = $1 WHERE event_id = $5)
SELECT version, pg_notify($3, version || ':' || $1) FROM log
"""
_LOCK_SUBJECT = """INSERT INTO subjects (subject) VALUES ($1)
   ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject"""
# The change log's horizon: no change below it can still commit. Only this service's own
# writers can hold it back: transactions that hold a lock on one of its tables in this
# database (a writer locks the table before its first write gives it a transaction id). A
# transaction of another database, or a session that never touched these tables, cannot
# stall the stream (it used to: the cluster-wide snapshot xmin). 32-bit xids from pg_locks are
# widened to xid8 with the epoch of the snapshot's xmax (an in-flight xid is below it).
_HORIZON = """
WITH snap AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax),
ours AS (
    SELECT DISTINCT virtualtransaction FROM pg_locks
     WHERE locktype = 'relation'
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND relation = ANY(ARRAY['subjects', 'deliveries', 'change_log', 'items',
                                'grants', 'change_log_state']::regclass[])),
writers AS (
    SELECT x.transactionid::text::bigint AS xid32
      FROM pg_locks x JOIN ours USING (virtualtransaction)
     WHERE x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock' AND x.granted)
SELECT snap.xmax,
       LEAST(snap.xmax, (SELECT min(((snap.xmax >> 32)
                                     - CASE WHEN w.xid32 > (snap.xmax & 4294967295) THEN 1
                                            ELSE 0 END) * 4294967296 + w.xid32)
                           FROM writers w)) AS horizon
  FROM snap
"""


_SUBJECT_KINDS = frozenset(
    {EventKind.ITEMS, EventKind.SUBJECT_CREATED, EventKind.SUBJECT_DELETED, EventKind.RECORD_ONLY}
)


async def _no_reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Skip asyncpg's per-release reset round trip: this store keeps no session state
    (no session locks, cursors, LISTEN or SET on pooled connections)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """Plan state in PostgreSQL. Construct with `Store.open(dsn, catalog)`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        catalog: Catalog,
        clock: Callable[[], int] = _now_ms,
        dsn: str = "",
        channel: str = CHANGES_CHANNEL,
    ) -> None:
        self._pool = pool
        self.dsn = dsn
        self.catalog = catalog
        self._clock = clock
        self._channel = channel
        self.calls = 0  # units of database work (pooled-connection uses); tests count them

    @classmethod
    async def open(
        cls,
        dsn: str,
        catalog: Catalog,
        *,
        min_size: int = 2,
        max_size: int = 10,
        clock: Callable[[], int] = _now_ms,
    ) -> Store:
        """Connect and migrate."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=10,
                timeout=5,
                reset=_no_reset,
            )
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL ({type(exc).__name__})") from exc
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, catalog, clock, dsn)

    async def close(self) -> None:
        await self._pool.close()

    def now_ms(self) -> int:
        return self._clock()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                yield conn
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection; retry deadlocks/serialisation failures."""
        self.calls += 1
        for attempt in range(5):
            try:
                async with self._connection() as conn:
                    return await work(conn)
            except _RETRYABLE_TX_ERRORS:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            async with self._connection() as conn:
                await conn.fetchval("SELECT 1", timeout=2)
            return True
        except _PING_FAILURES:
            return False

    # ---- reads -------------------------------------------------------------------------

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        """The stored state of each subject (unknown subjects get an empty state)."""
        unique = list(dict.fromkeys(subjects))

        async def work(conn: Conn) -> dict[str, SubjectState]:
            return await _load_states(conn, unique)

        return await self._run(work)

    async def history(self, subject: str, limit: int) -> list[HistoryRow]:
        async def work(conn: Conn) -> list[HistoryRow]:
            rows = await conn.fetch(
                """
                (SELECT 'delivery' AS kind, recorded_at, event_id, type, outcome, event_ms,
                        NULL::text AS from_plan, NULL::text AS to_plan,
                        array_to_string(notes, '; ') AS note, source
                   FROM deliveries WHERE subject = $1
                   ORDER BY recorded_at DESC LIMIT $2)
                UNION ALL
                (SELECT 'plan_change', changed_at, cause_event_id, cause_type, NULL, NULL,
                        from_plan, to_plan, 'version ' || version, NULL
                   FROM plan_changes WHERE subject = $1
                   ORDER BY changed_at DESC LIMIT $2)
                UNION ALL
                (SELECT 'grant', created_at, grant_id, 'grant', NULL, granted_at_ms,
                        NULL, plan,
                        reason || COALESCE(' (expires ' || to_timestamp(expires_at_ms / 1000.0)
                                           || ')', '')
                               || COALESCE('; revoked: ' || revoke_reason, ''), NULL
                   FROM grants WHERE subject = $1
                   ORDER BY created_at DESC LIMIT $2)
                ORDER BY recorded_at DESC, kind DESC LIMIT $2
                """,
                subject,
                limit,
            )
            return [HistoryRow(**dict(r)) for r in rows]

        return await self._run(work)

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

    async def scrub_older_than(self, retention_seconds: float, batch: int = 500) -> int:
        """Scrub personal data from payloads stored longer than the retention."""
        total = 0
        while True:

            async def work(conn: Conn) -> int:
                async with conn.transaction():
                    return await _scrub_deliveries(
                        conn,
                        """WHERE scrubbed_at IS NULL
                             AND recorded_at < now() - make_interval(secs => $1)
                           ORDER BY recorded_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
                        retention_seconds,
                        batch,
                    )

            done = await self._run(work)
            total += done
            if done < batch:
                return total

    # ---- operations: reconcile, replay, verify -----------------------------------------

    async def known_subjects(self, after: str, limit: int) -> list[str]:
        """Subjects not deleted, in id order after `after` (keyset paging)."""

        async def work(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                """SELECT subject FROM subjects WHERE deleted_at_ms IS NULL AND subject > $1
                    ORDER BY subject LIMIT $2""",
                after,
                limit,
            )
            return [r["subject"] for r in rows]

        return await self._run(work)

    async def count_known_subjects(self) -> int:
        async def work(conn: Conn) -> int:
            return int(
                await conn.fetchval("SELECT count(*) FROM subjects WHERE deleted_at_ms IS NULL")
            )

        return await self._run(work)

    async def claim_reconcile_run(self, interval_seconds: float, owner: str) -> bool:
        """True for exactly one replica per interval: the one that moves the schedule on."""

        async def work(conn: Conn) -> bool:
            return bool(
                await conn.fetchval(
                    """UPDATE reconcile_schedule
                          SET next_run_at = now() + make_interval(secs => $1), last_run_by = $2
                        WHERE next_run_at <= now() RETURNING true""",
                    interval_seconds,
                    owner,
                )
            )

        return await self._run(work)

    async def deliveries_page(
        self, selector: DeliverySelector, after: str, limit: int
    ) -> list[StoredDelivery]:
        """Stored deliveries matching `selector`, in event-id order after `after`."""

        async def work(conn: Conn) -> list[StoredDelivery]:
            return await _deliveries_page(conn, selector, after, limit)

        return await self._run(work)

    async def count_deliveries(self, selector: DeliverySelector) -> int:
        async def work(conn: Conn) -> int:
            return await _count_deliveries(conn, selector)

        return await self._run(work)

    async def replay(
        self, event_id: str, normalize: Callable[[StoredDelivery], NormalizedEvent]
    ) -> ReplayResult | None:
        """Re-apply one stored delivery as `normalize` now reads it; None if it is gone.

        The delivery row is locked first, so concurrent replays of it serialise, and the
        store's ordering guard makes a second replay change nothing: exactly once.
        """

        async def work(conn: Conn) -> ReplayResult | None:
            async with conn.transaction():
                row = await conn.fetchrow(
                    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id = $1 FOR UPDATE",
                    event_id,
                )
                if row is None:
                    return None
                stored = StoredDelivery(**dict(row))
                event = normalize(stored)
                if event.kind is EventKind.UNPARSEABLE and stored.outcome != Outcome.UNPARSEABLE:
                    # The parser now fails on what it once read: keep the stored outcome and
                    # state rather than let a regression erase them.
                    kept = ApplyResult(stored.outcome, None, None, None, 0, (event.error or "",))
                    return ReplayResult(stored, event, kept)
                if event.subject is not None and event.kind in _SUBJECT_KINDS:
                    await conn.execute(_LOCK_SUBJECT, event.subject)
                result = await self._apply_recorded(conn, event_id, event, stored.outcome)
                await conn.execute(
                    """UPDATE deliveries SET event_ms = $2
                        WHERE event_id = $1 AND event_ms IS DISTINCT FROM $2""",
                    event_id,
                    event.event_ms,
                )
                return ReplayResult(stored, event, result)

        try:
            return await self._run(work)
        except StoreUnavailable:
            raise
        except Exception as exc:
            # Applying failed again (rolled back): the delivery keeps its stored outcome, except
            # that one moving an item to another subject is now known to be IGNORED.
            owned_elsewhere = isinstance(exc, _ItemOwnedElsewhere)
            if not owned_elsewhere:
                log.exception("replay of %s could not apply it; kept as it was", event_id)
            note = str(exc) if owned_elsewhere else f"could not be applied ({type(exc).__name__})"
            return await self._keep_after_failed_replay(
                event_id, normalize, note, Outcome.IGNORED if owned_elsewhere else None
            )

    async def _keep_after_failed_replay(
        self,
        event_id: str,
        normalize: Callable[[StoredDelivery], NormalizedEvent],
        note: str,
        outcome: str | None,
    ) -> ReplayResult | None:
        async def work(conn: Conn) -> ReplayResult | None:
            row = await conn.fetchrow(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id = $1", event_id
            )
            if row is None:
                return None
            stored = StoredDelivery(**dict(row))
            if outcome is not None:
                await conn.execute(
                    "UPDATE deliveries SET outcome = $2, notes = array_append(notes, $3) "
                    "WHERE event_id = $1",
                    event_id,
                    outcome,
                    storable_text(note, MAX_STORED_TEXT),
                )
            kept = ApplyResult(outcome or stored.outcome, None, None, None, 0, (note,))
            return ReplayResult(stored, normalize(stored), kept)

        return await self._run(work)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[StoreSnapshot]:
        """A read-only repeatable-read view of everything. A delivery commits in one
        transaction with its effects, so the view holds each delivery with exactly its
        effects, whatever is written meanwhile."""
        try:
            async with (
                self._pool.acquire(timeout=5) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield StoreSnapshot(conn)
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc

    async def drop_abandoned_scratch_schemas(self) -> list[str]:
        """Drop verification scratch schemas (earlier versions rebuilt into one) whose run is
        gone (killed mid-run): they hold a copy of every payload, personal data included. A
        run still in progress holds its lock, so its schema is left alone."""

        async def work(conn: Conn) -> list[str]:
            names = [
                r["nspname"]
                for r in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname ~ $1", SCRATCH_SCHEMA_PATTERN
                )
            ]
            dropped = []
            for name in names:
                async with conn.transaction():
                    free = await conn.fetchval(
                        "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                        _SCRATCH_LOCK_CLASS,
                        name,
                    )
                    if free:
                        await conn.execute(f"DROP SCHEMA IF EXISTS {_identifier(name)} CASCADE")
                        dropped.append(name)
            return dropped

        return await self._run(work)

    # ---- writes ------------------------------------------------------------------------

    async def grant(
        self, subject: str, plan: str, expires_at_ms: int | None, reason: str
    ) -> tuple[str, ApplyResult]:
        """Record a manual grant and apply it, in one transaction; returns its id too."""
        grant_id = "grant_" + uuid.uuid4().hex

        async def work(conn: Conn) -> ApplyResult:
            async with conn.transaction():
                await conn.execute(_LOCK_SUBJECT, subject)
                now = self.now_ms()
                state = (await _load_states(conn, [subject]))[subject]
                await conn.execute(
                    """INSERT INTO grants (grant_id, subject, plan, reason, granted_at_ms,
                                           expires_at_ms)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    grant_id,
                    subject,
                    plan,
                    reason,
                    now,
                    expires_at_ms,
                )
                after = replace(state, grants=(*state.grants, Grant(plan, now, expires_at_ms)))
                return await self._commit_manual(conn, subject, state, after, grant_id, "grant")

        return grant_id, await self._run(work)

    async def revoke_grant(self, grant_id: str, reason: str) -> ApplyResult | None:
        """End a grant; None when there is no such active grant."""

        async def work(conn: Conn) -> ApplyResult | None:
            async with conn.transaction():
                subject = await conn.fetchval(
                    "SELECT subject FROM grants WHERE grant_id = $1 AND revoked_at_ms IS NULL",
                    grant_id,
                )
                if subject is None:
                    return None
                await conn.execute(_LOCK_SUBJECT, subject)
                state = (await _load_states(conn, [subject]))[subject]
                revoked = await conn.fetchval(
                    """UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3
                        WHERE grant_id = $1 AND revoked_at_ms IS NULL RETURNING true""",
                    grant_id,
                    self.now_ms(),
                    reason,
                )
                if not revoked:
                    return None  # revoked concurrently
                after = (await _load_states(conn, [subject]))[subject]
                return await self._commit_manual(conn, subject, state, after, grant_id, "revoke")

        return await self._run(work)

    async def _commit_manual(
        self,
        conn: Conn,
        subject: str,
        before_state: SubjectState,
        after_state: SubjectState,
        cause_id: str,
        cause_type: str,
    ) -> ApplyResult:
        now = self.now_ms()
        before = resolve(before_state, self.catalog, now)
        after = resolve(after_state, self.catalog, now)
        version = await _commit_change(
            conn, self._channel, subject, before, after, cause_id, cause_type, []
        )
        return ApplyResult(Outcome.APPLIED, subject, after.plan.name, before.plan.name, version)

    async def apply(
        self,
        event_id: str,
        event_type: str,
        payload: bytes,
        received_at: datetime,
        event: NormalizedEvent,
        *,
        source: str = "webhook",
        signed_at_ms: int | None = None,
    ) -> ApplyResult:
        """Record the delivery and apply it, in one transaction; returns after commit.

        `source` says where it came from ("webhook", or "reconcile" for a synthetic event);
        `signed_at_ms` is the fallback event time it was normalised with (kept for replay).
        """

        async def work(conn: Conn) -> ApplyResult:
            async with conn.transaction():
                return await self._apply_in_tx(
                    conn, event_id, event_type, payload, received_at, event, source, signed_at_ms
                )

        try:
            return await self._run(work)
        except StoreUnavailable:
            raise
        except _ItemOwnedElsewhere as exc:
            outcome, notes = Outcome.IGNORED, [*event.notes, str(exc)]
        except Exception as exc:
            # Every verified delivery is stored: whatever made applying it fail (a value the
            # database refuses, a bug), its raw body is kept UNPARSEABLE for a replay after a fix.
            log.exception(
                "event %s (%s) could not be applied; stored as UNPARSEABLE",
                event_id,
                storable_text(event.type, 100),
            )
            outcome = Outcome.UNPARSEABLE
            notes = [*event.notes, f"could not be applied ({type(exc).__name__}); kept for replay"]
        return await self._record_only(
            event_id, event_type, payload, received_at, event, source, signed_at_ms, outcome, notes
        )

    async def _record_only(
        self,
        event_id: str,
        event_type: str,
        payload: bytes,
        received_at: datetime,
        event: NormalizedEvent,
        source: str,
        signed_at_ms: int | None,
        outcome: str,
        notes: list[str],
    ) -> ApplyResult:
        """Store a delivery with an outcome and no effect on any state (its own transaction)."""
        safe_notes = [storable_text(n, MAX_STORED_TEXT) for n in notes]

        async def work(conn: Conn) -> ApplyResult:
            inserted = await conn.fetchval(
                """INSERT INTO deliveries (event_id, type, payload, subject, outcome, notes,
                                           event_ms, received_at, source, signed_at_ms)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                   ON CONFLICT (event_id) DO NOTHING RETURNING true""",
                event_id,
                storable_text(event_type, MAX_STORED_TEXT),
                payload,
                event.subject,
                outcome,
                safe_notes,
                within_window(event.event_ms),
                received_at,
                source,
                within_window(signed_at_ms),
            )
            if not inserted:
                return await self._duplicate(conn, event_id)
            return ApplyResult(outcome, event.subject, None, None, 0, tuple(safe_notes), True)

        try:
            return await self._run(work)
        except StoreUnavailable:
            raise
        except Exception as exc:  # not even the raw delivery could be stored: let Svix retry
            log.exception("event %s could not be recorded", event_id)
            raise StoreUnavailable(f"could not record the delivery ({type(exc).__name__})") from exc

    async def _apply_in_tx(
        self,
        conn: Conn,
        event_id: str,
        event_type: str,
        payload: bytes,
        received_at: datetime,
        event: NormalizedEvent,
        source: str,
        signed_at_ms: int | None,
    ) -> ApplyResult:
        # Record the delivery (the idempotency key) and, for a subject's event, lock the
        # subject row, in one round trip. A duplicate inserts nothing and locks nothing.
        inserted = await conn.fetchval(
            """WITH d AS (
                   INSERT INTO deliveries (event_id, type, payload, subject, outcome, event_ms,
                                           received_at, source, signed_at_ms)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10)
                   ON CONFLICT (event_id) DO NOTHING RETURNING event_id),
               s AS (
                   INSERT INTO subjects (subject) SELECT $8 FROM d WHERE $8::text IS NOT NULL
                   ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject
                   RETURNING subject)
               SELECT count(*) FROM d""",
            event_id,
            event_type,
            payload,
            event.subject,
            Outcome.PENDING,
            event.event_ms,
            received_at,
            event.subject if event.kind in _SUBJECT_KINDS else None,
            source,
            signed_at_ms,
        )
        if not inserted:
            return await self._duplicate(conn, event_id)
        return await self._apply_recorded(conn, event_id, event)

    async def _apply_recorded(
        self, conn: Conn, event_id: str, event: NormalizedEvent, previous_outcome: str | None = None
    ) -> ApplyResult:
        """Apply a delivery whose row exists (and whose subject row is locked) and record the
        outcome. A replay that finds its effect already stored keeps the APPLIED outcome."""
        notes = list(event.notes)
        if event.error:
            notes.append(event.error)
        for item in event.items:
            match = self.catalog.match(item.plan_slug, item.plan_id)
            if not match.known:
                notes.append(
                    f"unknown plan slug {item.plan_slug!r} (id {item.plan_id!r}) "
                    f"mapped to default plan {match.plan.name!r}"
                )

        result: ApplyResult
        if event.kind is EventKind.UNPARSEABLE:
            result = ApplyResult(Outcome.UNPARSEABLE, event.subject, None, None, 0)
        elif event.kind is EventKind.IGNORED:
            # Linked to the subject it is about, so that subject's deletion scrubs it too.
            if event.subject is not None and await conn.fetchval(
                "SELECT true FROM subjects WHERE subject = $1 AND deleted_at_ms IS NOT NULL",
                event.subject,
            ):
                await _scrub_deliveries(conn, "WHERE event_id = $1 FOR UPDATE", event_id)
            result = ApplyResult(Outcome.IGNORED, event.subject, None, None, 0)
        elif event.subject is None:
            result = ApplyResult(Outcome.APPLIED, None, None, None, 0)
        else:
            result = await self._apply_to_subject(conn, event_id, event, notes)
        if previous_outcome == Outcome.APPLIED and result.outcome == Outcome.STALE:
            result = replace(result, outcome=Outcome.APPLIED)
        if not result.recorded:
            await conn.execute(
                "UPDATE deliveries SET outcome = $2, notes = $3, subject = $4 WHERE event_id = $1",
                event_id,
                result.outcome,
                notes,
                result.subject,
            )
        return ApplyResult(
            result.outcome,
            result.subject,
            result.plan,
            result.previous_plan,
            result.version,
            tuple(notes),
            recorded=result.recorded,
        )

    async def _duplicate(self, conn: Conn, event_id: str) -> ApplyResult:
        row = await conn.fetchrow("SELECT subject FROM deliveries WHERE event_id = $1", event_id)
        subject = row["subject"] if row else None
        if subject is None:
            return ApplyResult(Outcome.DUPLICATE, None, None, None, 0)
        state = (await _load_states(conn, [subject]))[subject]
        ent = resolve(state, self.catalog, self.now_ms())
        return ApplyResult(Outcome.DUPLICATE, subject, ent.plan.name, ent.plan.name, state.version)

    async def _apply_to_subject(
        self, conn: Conn, event_id: str, event: NormalizedEvent, notes: list[str]
    ) -> ApplyResult:
        assert event.subject is not None
        subject = event.subject
        # The subject row is locked (see _apply_in_tx): concurrent deliveries for one subject
        # serialise there, so this read sees every earlier change.
        state = (await _load_states(conn, [subject]))[subject]
        if state.deleted_at_ms is not None or event.kind is EventKind.SUBJECT_DELETED:
            # A deleted subject's stored payloads keep no personal data (late arrivals too).
            await _scrub_deliveries(
                conn, "WHERE subject = $1 AND scrubbed_at IS NULL FOR UPDATE", subject
            )
        now = self.now_ms()
        before = resolve(state, self.catalog, now)

        changed = False
        after_state = state
        if event.kind is EventKind.ITEMS:
            current = {item.item_id: item for item in state.items}
            fresh: list[ItemState] = []
            observed: list[ItemState] = []
            for update in event.items:
                old = current.get(update.item_id)
                new = item_after_update(old, update)
                # Stored even when older than the subject's deletion, so the stored state is
                # the same whatever the arrival order; resolution ignores such items.
                if await _upsert_item(
                    conn,
                    new,
                    subject,
                    update.lifecycle_rank,
                    update.digest,
                    update.is_default,
                    event_id,
                ):
                    fresh.append(new)
                    current[new.item_id] = new
                    continue
                if old is None:  # the row exists, but not among this subject's items
                    raise _ItemOwnedElsewhere(
                        f"item {echo(update.item_id)} belongs to another subject; "
                        "the delivery changed nothing"
                    )
                seen = item_after_stale(old, update)
                if seen != old:
                    await conn.execute(
                        _OBSERVE_STALE,
                        seen.item_id,
                        subject,
                        seen.ever_active,
                        *_last_ok(seen.past_due),
                        seen.past_due.flat(),
                        seen.past_due_at_ms,
                    )
                    observed.append(seen)
                    current[seen.item_id] = seen
            after_state = with_items(state, [*fresh, *observed])
            deleted_at = state.deleted_at_ms
            visible = [i for i in fresh if deleted_at is None or i.event_ms > deleted_at]
            changed = bool(visible) or (
                bool(observed)
                and _visible(resolve(after_state, self.catalog, now)) != _visible(before)
            )
        elif event.kind is EventKind.SUBJECT_DELETED:
            assert event.event_ms is not None
            changed = bool(
                await conn.fetchval(
                    """UPDATE subjects SET deleted_at_ms = $2, updated_at = now()
                       WHERE subject = $1 AND (deleted_at_ms IS NULL OR deleted_at_ms < $2)
                       RETURNING true""",
                    subject,
                    event.event_ms,
                )
            )
            if changed:
                after_state = replace(state, deleted_at_ms=event.event_ms)
        elif event.kind is EventKind.SUBJECT_CREATED:
            await conn.execute(
                """UPDATE subjects SET created_at_ms = LEAST(COALESCE(created_at_ms, $2), $2)
                   WHERE subject = $1""",
                subject,
                event.event_ms,
            )
            return ApplyResult(
                Outcome.APPLIED, subject, before.plan.name, before.plan.name, state.version
            )

        if not changed:
            outcome = Outcome.STALE if event.kind is not EventKind.RECORD_ONLY else Outcome.APPLIED
            return ApplyResult(outcome, subject, before.plan.name, before.plan.name, state.version)
        after = resolve(after_state, self.catalog, now)
        version = await _commit_change(
            conn, self._channel, subject, before, after, event_id, event.type, notes
        )
        return ApplyResult(
            Outcome.APPLIED, subject, after.plan.name, before.plan.name, version, recorded=True
        )


async def _commit_change(
    conn: Conn,
    channel: str,
    subject: str,
    before: Entitlements,
    after: Entitlements,
    cause_id: str,
    cause_type: str,
    notes: list[str],
) -> int:
    """Bump the subject's version, log and announce the change, record a plan change and the
    causing delivery's outcome (if any): one round trip. Returns the new version."""
    return int(
        await conn.fetchval(
            _COMMIT_CHANGE,
            subject,
            after.plan.name,
            channel,
            before.plan.name,
            cause_id,
            cause_type,
            Outcome.APPLIED,
            notes,
        )
    )


async def _scrub_deliveries(conn: Conn, where: str, *args: Any) -> int:
    rows = await conn.fetch(f"SELECT event_id, payload FROM deliveries {where}", *args)
    if rows:
        await conn.executemany(
            "UPDATE deliveries SET payload = $2, scrubbed_at = now() WHERE event_id = $1",
            [(r["event_id"], scrub_payload(r["payload"])) for r in rows],
        )
    return len(rows)


def _visible(ent: Entitlements) -> tuple[str, str, int | None]:
    return (ent.plan.name, ent.status.value, ent.valid_until_ms)


async def _upsert_item(
    conn: Conn,
    item: ItemState,
    subject: str,
    lifecycle_rank: int,
    digest: str,
    is_default: bool,
    event_id: str,
) -> bool:
    row = await conn.fetchval(
        _UPSERT_ITEM,
        item.item_id,
        subject,
        item.status.value,
        item.plan_slug,
        item.plan_id,
        item.period_end_ms,
        item.past_due_at_ms,
        is_default,
        item.ever_active,
        item.event_ms,
        lifecycle_rank,
        digest,
        event_id,
        *_last_ok(item.past_due),
        item.past_due.flat(),
    )
    return row is not None


def _last_ok(track: PastDueTrack) -> tuple[int | None, int | None]:
    return track.last_ok if track.last_ok is not None else (None, None)


def _item_state(row: Any) -> ItemState:
    """A stored item; instants outside the plausible window (data stored before the bounds
    existed) read as missing, so no stored value can break a read."""
    return ItemState(
        item_id=row["item_id"],
        status=ItemStatus(row["status"]),
        plan_slug=row["plan_slug"],
        plan_id=row["plan_id"],
        period_end_ms=within_window(row["period_end_ms"]),
        past_due_at_ms=within_window(row["past_due_at_ms"]),
        event_ms=row["event_ms"],
        ever_active=row["ever_active"],
        past_due=PastDueTrack.from_flat(
            row["last_ok_ms"], row["last_ok_rank"], row["past_due_marks"] or ()
        ),
    )


async def _load_states(conn: Conn, subjects: list[str]) -> dict[str, SubjectState]:
    rows = await conn.fetch(
        f"""SELECT q.subject, s.version, s.deleted_at_ms, {_ITEM_COLUMNS},
                   (SELECT json_agg(json_build_array(g.plan, g.granted_at_ms, g.expires_at_ms))
                      FROM grants g
                     WHERE g.subject = q.subject AND g.revoked_at_ms IS NULL) AS grants
              FROM unnest($1::text[]) AS q(subject)
              LEFT JOIN subjects s ON s.subject = q.subject
              LEFT JOIN items i ON i.subject = q.subject""",
        subjects,
    )
    items: dict[str, list[ItemState]] = {s: [] for s in subjects}
    meta: dict[str, tuple[int, int | None]] = {}
    grants: dict[str, tuple[Grant, ...]] = {}
    for row in rows:
        subject = row["subject"]
        meta[subject] = (row["version"] or 0, row["deleted_at_ms"])
        if row["item_id"] is not None:
            try:
                items[subject].append(_item_state(row))
            except (ValueError, TypeError, KeyError, IndexError):
                # One unreadable row must not break its subject's (or a batch's) answer.
                log.error("item %s of %s cannot be read; left out", row["item_id"], subject)
        if row["grants"] is not None and subject not in grants:
            grants[subject] = tuple(Grant(p, g, e) for p, g, e in json.loads(row["grants"]))
    return {
        s: SubjectState(
            subject=s,
            items=tuple(items[s]),
            grants=grants.get(s, ()),
            deleted_at_ms=meta.get(s, (0, None))[1],
            version=meta.get(s, (0, None))[0],
        )
        for s in subjects
    }


# Verification's scratch schemas: `verify_` and 16 hex digits (see operations.verify).
SCRATCH_SCHEMA_PATTERN = "^verify_[0-9a-f]{16}$"
_SCRATCH_LOCK_CLASS = 7305  # advisory lock class of "this scratch schema is in use"


@dataclass(frozen=True)
class ChangeBatch:
    """What the follower read: changes (txid, version, subject), where to go on from, the
    transaction-id ceiling at the time, and whether it reached the horizon."""

    changes: list[tuple[int, int, str]]
    next_position: int
    xmax: int
    complete: bool


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


_GRANT_COLUMNS = (
    "grant_id, subject, plan, reason, granted_at_ms, expires_at_ms, revoked_at_ms, "
    "revoke_reason, created_at"
)
_DELIVERY_COLUMNS = "event_id, type, payload, outcome, received_at, signed_at_ms, source"
VerificationRows = tuple[dict[str, tuple[Any, ...]], dict[str, int | None]]


async def _deliveries_page(
    conn: Conn, selector: DeliverySelector, after: str, limit: int
) -> list[StoredDelivery]:
    rows = await conn.fetch(
        f"""SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE event_id > $1 AND {selector.where(3)}
             ORDER BY event_id LIMIT $2""",
        after,
        limit,
        *selector.args,
    )
    return [StoredDelivery(**dict(r)) for r in rows]


async def _count_deliveries(conn: Conn, selector: DeliverySelector) -> int:
    return int(
        await conn.fetchval(
            f"SELECT count(*) FROM deliveries WHERE {selector.where(1)}", *selector.args
        )
    )


async def _verification_rows(conn: Conn) -> VerificationRows:
    """Every item row (state columns only) and every subject's deletion time."""
    items = await conn.fetch(f"SELECT {', '.join(ITEM_STATE_COLUMNS)} FROM items")
    subjects = await conn.fetch("SELECT subject, deleted_at_ms FROM subjects")
    return (
        {r["item_id"]: tuple(r) for r in items},
        {r["subject"]: r["deleted_at_ms"] for r in subjects},
    )


class StoreSnapshot:
    """Reads inside one repeatable-read transaction (see `Store.snapshot`)."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def count_deliveries(self, selector: DeliverySelector) -> int:
        return await _count_deliveries(self._conn, selector)

    async def deliveries_page(
        self, selector: DeliverySelector, after: str, limit: int
    ) -> list[StoredDelivery]:
        return await _deliveries_page(self._conn, selector, after, limit)

    async def grants(self) -> list[tuple[Any, ...]]:
        rows = await self._conn.fetch(f"SELECT {_GRANT_COLUMNS} FROM grants")
        return [tuple(r) for r in rows]

    async def verification_rows(self) -> VerificationRows:
        return await _verification_rows(self._conn)

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        return await _load_states(self._conn, list(dict.fromkeys(subjects)))
