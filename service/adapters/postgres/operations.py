"""Reads for operators and jobs, and housekeeping: history, the reconcile schedule, stored
deliveries for replay, verify's snapshot, scrubbing, leftover scratch schemas."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from service.adapters.postgres.base import UNAVAILABLE_ERRORS, Conn, StoreBase
from service.adapters.postgres.deliveries import (
    count_deliveries,
    deliveries_page,
    scrub_deliveries,
)
from service.adapters.postgres.subjects import load_subject_states
from service.application.ports import StoreUnavailable
from service.application.records import DeliverySelector, HistoryRow, StoredDelivery
from service.domain.override_log import OVERRIDE_COLUMNS, OverrideEvent
from service.domain.rebuild import ITEM_STATE_COLUMNS
from service.domain.resolution import Grant, SubjectState
from service.domain.unknown_plans import NotedDelivery
from service.domain.usage import Counter, Kind, Period, UsageEvent

log = logging.getLogger(__name__)


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


# Verification's scratch schemas: `verify_` and 16 hex digits (see operations.verify).
SCRATCH_SCHEMA_PATTERN = "^verify_[0-9a-f]{16}$"
_SCRATCH_LOCK_CLASS = 7305  # advisory lock class of "this scratch schema is in use"


# Deliveries stored in the last $1 hours whose notes name an unknown plan (what the partial index
# of migration 0011 holds: the predicate must stay the index's).
UNKNOWN_PLAN_DELIVERIES = """
SELECT event_id, subject, notes,
       (extract(epoch FROM recorded_at) * 1000)::bigint AS recorded_at_ms
  FROM deliveries
 WHERE names_unknown_plan(notes) AND recorded_at >= now() - make_interval(hours => $1)
 ORDER BY recorded_at DESC LIMIT $2
"""

VerificationRows = tuple[dict[str, tuple[Any, ...]], dict[str, int | None]]


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
        return await count_deliveries(self._conn, selector)

    async def deliveries_page(
        self, selector: DeliverySelector, after: str, limit: int
    ) -> list[StoredDelivery]:
        return await deliveries_page(self._conn, selector, after, limit)

    async def grants(self) -> list[tuple[str, Grant | None]]:
        rows = await self._conn.fetch(
            "SELECT subject, plan, granted_at_ms, expires_at_ms, revoked_at_ms FROM grants"
        )
        return [
            (
                r["subject"],
                Grant(r["plan"], r["granted_at_ms"], r["expires_at_ms"])
                if r["revoked_at_ms"] is None
                else None,
            )
            for r in rows
        ]

    async def verification_rows(self) -> VerificationRows:
        return await _verification_rows(self._conn)

    async def override_rows(self) -> dict[str, tuple[Any, ...]]:
        rows = await self._conn.fetch(
            f"SELECT override_id, {', '.join(OVERRIDE_COLUMNS)} FROM overrides"
        )
        return {r["override_id"]: tuple(r)[1:] for r in rows}

    async def override_events(self) -> list[OverrideEvent]:
        rows = await self._conn.fetch(
            """SELECT override_id, kind, reason, at_ms, subject, feature, limit_name, enabled,
                      limit_value, unlimited, expires_at_ms
                 FROM override_events ORDER BY seq"""
        )
        return [OverrideEvent(**dict(r)) for r in rows]

    async def usage_counters(self) -> dict[tuple[str, str], Counter]:
        rows = await self._conn.fetch(
            "SELECT subject, meter, period_start_ms, period_end_ms, used FROM usage_counters"
        )
        return {
            (r["subject"], r["meter"]): Counter(
                Period(r["period_start_ms"], r["period_end_ms"]), r["used"]
            )
            for r in rows
        }

    async def usage_events_page(
        self, after: tuple[str, str, int], limit: int
    ) -> list[tuple[str, str, int, UsageEvent]]:
        rows = await self._conn.fetch(
            """SELECT subject, meter, seq, kind, amount, recorded_at_ms, period_start_ms,
                      resets_at_ms
                 FROM usage_records WHERE (subject, meter, seq) > ($1, $2, $3) AND seq > 0
                ORDER BY subject, meter, seq LIMIT $4""",
            *after,
            limit,
        )
        return [
            (
                r["subject"],
                r["meter"],
                r["seq"],
                UsageEvent(
                    Kind(r["kind"]),
                    r["amount"],
                    r["recorded_at_ms"],
                    Period(r["period_start_ms"], r["resets_at_ms"]),
                ),
            )
            for r in rows
        ]

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        return await load_subject_states(self._conn, list(dict.fromkeys(subjects)))


class OperationsStore(StoreBase):
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
                UNION ALL
                (SELECT 'override', created_at, override_id, 'override', NULL, created_at_ms,
                        NULL, NULL,
                        COALESCE('feature ' || feature
                                 || CASE WHEN enabled THEN ' granted' ELSE ' withheld' END,
                                 'limit ' || limit_name || ' = '
                                 || CASE WHEN unlimited THEN 'unlimited'
                                         ELSE limit_value::text END)
                        || ': ' || reason
                        || COALESCE(' (expires ' || to_timestamp(expires_at_ms / 1000.0)
                                    || ')', '')
                        || COALESCE('; removed: ' || remove_reason, ''), NULL
                   FROM overrides WHERE subject = $1
                   ORDER BY created_at DESC LIMIT $2)
                ORDER BY recorded_at DESC, kind DESC LIMIT $2
                """,
                subject,
                limit,
            )
            return [HistoryRow(**dict(r)) for r in rows]

        return await self._run(work)

    async def unknown_plan_deliveries(self, hours: int, limit: int) -> list[NotedDelivery]:
        """Deliveries stored in the last `hours` (the database's clock, which stamped them)
        whose notes name an unknown plan, newest first (the partial index of migration 0011)."""

        async def work(conn: Conn) -> list[NotedDelivery]:
            rows = await conn.fetch(UNKNOWN_PLAN_DELIVERIES, hours, limit)
            return [
                NotedDelivery(r["event_id"], r["subject"], r["recorded_at_ms"], tuple(r["notes"]))
                for r in rows
            ]

        return await self._run(work)

    async def scrub_older_than(self, retention_seconds: float, batch: int = 500) -> int:
        """Scrub personal data from payloads stored longer than the retention."""
        total = 0
        while True:

            async def work(conn: Conn) -> int:
                async with conn.transaction():
                    return await scrub_deliveries(
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
            return await deliveries_page(conn, selector, after, limit)

        return await self._run(work)

    async def count_deliveries(self, selector: DeliverySelector) -> int:
        async def work(conn: Conn) -> int:
            return await count_deliveries(conn, selector)

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
        except UNAVAILABLE_ERRORS as exc:
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
