"""Plan state per subject (subjects, items, the change log): the ordering-guarded upsert, the
one-round-trip commit of a change, loading subject states. SQL only: the rule that decides
what to write is the subject aggregate's (service/domain/subject.py); the guard here is its
backstop under concurrency."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from service.adapters.postgres.base import (
    Conn,
)
from service.domain.bounds import within_window
from service.domain.catalog import LimitValue
from service.domain.deliveries import Outcome
from service.domain.events import ItemStatus
from service.domain.past_due import PastDueTrack
from service.domain.resolution import (
    Grant,
    ItemState,
    Override,
    SubjectState,
)
from service.domain.subject import HeldItem, Subject

log = logging.getLogger(__name__)

ITEM_COLUMNS = (
    "i.item_id, i.status, i.plan_slug, i.plan_id, i.period_end_ms, i.past_due_at_ms, "
    "i.event_ms, i.ever_active, i.last_ok_ms, i.last_ok_rank, i.past_due_marks, "
    "i.period_start_ms, i.free_trial"
)
# What the subject aggregate holds of an item besides its state: the order that wrote it.
HELD_COLUMNS = ", i.lifecycle_rank, i.digest, i.is_default, i.source_event_id"

# The ordering guard lives in the UPDATE's WHERE: the row changes only when the incoming
# (event time, lifecycle rank, digest) is strictly greater than the stored one. An item belongs
# to the subject that first held it: a row of another subject is never moved.
UPSERT_ITEM = """
INSERT INTO items (item_id, subject, status, plan_slug, plan_id, period_end_ms, past_due_at_ms,
                   is_default, ever_active, event_ms, lifecycle_rank, digest, source_event_id,
                   last_ok_ms, last_ok_rank, past_due_marks, period_start_ms, free_trial)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
ON CONFLICT (item_id) DO UPDATE SET
    status = EXCLUDED.status, plan_slug = EXCLUDED.plan_slug,
    plan_id = EXCLUDED.plan_id, period_end_ms = EXCLUDED.period_end_ms,
    past_due_at_ms = EXCLUDED.past_due_at_ms, is_default = EXCLUDED.is_default,
    ever_active = items.ever_active OR EXCLUDED.ever_active,
    event_ms = EXCLUDED.event_ms, lifecycle_rank = EXCLUDED.lifecycle_rank,
    digest = EXCLUDED.digest, source_event_id = EXCLUDED.source_event_id,
    last_ok_ms = EXCLUDED.last_ok_ms, last_ok_rank = EXCLUDED.last_ok_rank,
    past_due_marks = EXCLUDED.past_due_marks,
    period_start_ms = EXCLUDED.period_start_ms, free_trial = EXCLUDED.free_trial,
    updated_at = now()
WHERE items.subject = EXCLUDED.subject
  AND (items.event_ms, items.lifecycle_rank, items.digest)
    < (EXCLUDED.event_ms, EXCLUDED.lifecycle_rank, EXCLUDED.digest)
RETURNING item_id
"""

# An older event still counts as an observation: `ever_active` only grows (a lifetime item that
# was ever active stays entitling whatever the order) and past-due episodes are tracked.
OBSERVE_STALE = """
UPDATE items SET ever_active = $3, last_ok_ms = $4, last_ok_rank = $5, past_due_marks = $6,
                 past_due_at_ms = $7
 WHERE item_id = $1 AND subject = $2
"""


# One statement: take the subject's next version, record it, log the change (stream position:
# this transaction's id) and NOTIFY "<version>:<subject>", delivered to every replica at commit.
# The plan-change history row and the delivery's outcome ride along, to save round trips.
COMMIT_CHANGE = """
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
LOCK_SUBJECT = """INSERT INTO subjects (subject) VALUES ($1)
   ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject"""


def last_ok_columns(track: PastDueTrack) -> tuple[int | None, int | None]:
    return track.last_ok if track.last_ok is not None else (None, None)


def item_state_from_row(row: Any) -> ItemState:
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
        period_start_ms=within_window(row["period_start_ms"]),
        free_trial=bool(row["free_trial"]),
    )


def override_from_json(raw: list[Any]) -> Override:
    """One row of OVERRIDES_JSON."""
    override_id, feature, limit, enabled, value, unlimited, created, expires, reason = raw
    limit_value = None
    if limit is not None:
        limit_value = LimitValue(unlimited=True) if unlimited else LimitValue(int(value or 0))
    return Override(
        override_id=override_id,
        feature=feature,
        limit=limit,
        created_at_ms=created,
        enabled=bool(enabled),
        value=limit_value,
        expires_at_ms=expires,
        reason=reason,
    )


# A subject's overrides not removed (expired ones too: resolution drops them by time).
OVERRIDES_JSON = """(SELECT json_agg(json_build_array(o.override_id, o.feature, o.limit_name,
                                 o.enabled, o.limit_value, o.unlimited, o.created_at_ms,
                                 o.expires_at_ms, o.reason))
                        FROM overrides o
                       WHERE o.subject = q.subject AND o.removed_at_ms IS NULL)"""


async def load_subject_states(
    conn: Conn, subjects: list[str], aggregates: dict[str, Subject] | None = None
) -> dict[str, SubjectState]:
    """The subjects' states; their aggregates too, into `aggregates` when given."""
    held = HELD_COLUMNS if aggregates is not None else ""
    rows = await conn.fetch(
        f"""SELECT q.subject, s.version, s.deleted_at_ms, {ITEM_COLUMNS}{held},
                   (SELECT json_agg(json_build_array(g.plan, g.granted_at_ms, g.expires_at_ms))
                      FROM grants g
                     WHERE g.subject = q.subject AND g.revoked_at_ms IS NULL) AS grants,
                   {OVERRIDES_JSON} AS overrides
              FROM unnest($1::text[]) AS q(subject)
              LEFT JOIN subjects s ON s.subject = q.subject
              LEFT JOIN items i ON i.subject = q.subject""",
        subjects,
    )
    items: dict[str, list[ItemState]] = {s: [] for s in subjects}
    meta: dict[str, tuple[int, int | None]] = {}
    grants: dict[str, tuple[Grant, ...]] = {}
    overrides: dict[str, tuple[Override, ...]] = {}
    for row in rows:
        subject = row["subject"]
        meta[subject] = (row["version"] or 0, row["deleted_at_ms"])
        if row["item_id"] is not None:
            try:
                items[subject].append(item := item_state_from_row(row))
                if aggregates is not None:
                    aggregate = aggregates.setdefault(subject, Subject(subject))
                    order = (item.event_ms, row["lifecycle_rank"], row["digest"])
                    aggregate.items[item.item_id] = HeldItem(
                        item, order, row["is_default"], row["source_event_id"] or ""
                    )
            except (ValueError, TypeError, KeyError, IndexError):
                # One unreadable row must not break its subject's (or a batch's) answer.
                log.error("item %s of %s cannot be read; left out", row["item_id"], subject)
        if row["grants"] is not None and subject not in grants:
            grants[subject] = tuple(Grant(p, g, e) for p, g, e in json.loads(row["grants"]))
        if row["overrides"] is not None and subject not in overrides:
            overrides[subject] = tuple(override_from_json(o) for o in json.loads(row["overrides"]))
    states = {
        s: SubjectState(
            subject=s,
            items=tuple(items[s]),
            grants=grants.get(s, ()),
            deleted_at_ms=meta.get(s, (0, None))[1],
            version=meta.get(s, (0, None))[0],
            overrides=overrides.get(s, ()),
        )
        for s in subjects
    }
    if aggregates is not None:
        for s, state in states.items():
            aggregate = aggregates.setdefault(s, Subject(s))
            aggregate.deleted_at_ms, aggregate.version = state.deleted_at_ms, state.version
            aggregate.grants = state.grants
            aggregate.overrides = {o.override_id: o for o in state.overrides}
    return states


class PgSubjects:
    """SubjectRepository on one connection inside a unit of work's transaction."""

    def __init__(self, conn: Conn, channel: str) -> None:
        self._conn = conn
        self._channel = channel

    async def lock(self, subject: str) -> None:
        await self._conn.execute(LOCK_SUBJECT, subject)

    async def states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        return await load_subject_states(self._conn, list(dict.fromkeys(subjects)))

    async def load(self, subject: str) -> Subject:
        aggregates: dict[str, Subject] = {}
        await load_subject_states(self._conn, [subject], aggregates)
        return aggregates[subject]

    async def is_deleted(self, subject: str) -> bool:
        return bool(
            await self._conn.fetchval(
                "SELECT true FROM subjects WHERE subject = $1 AND deleted_at_ms IS NOT NULL",
                subject,
            )
        )

    async def put_item(
        self,
        subject: str,
        item: ItemState,
        order: tuple[int, int, str],
        is_default: bool,
        event_id: str,
    ) -> bool:
        event_ms, rank, digest = order
        row = await self._conn.fetchval(
            UPSERT_ITEM,
            item.item_id,
            subject,
            item.status.value,
            item.plan_slug,
            item.plan_id,
            item.period_end_ms,
            item.past_due_at_ms,
            is_default,
            item.ever_active,
            event_ms,
            rank,
            digest,
            event_id,
            *last_ok_columns(item.past_due),
            item.past_due.flat(),
            item.period_start_ms,
            item.free_trial,
        )
        return row is not None

    async def observe(self, subject: str, item: ItemState) -> None:
        await self._conn.execute(
            OBSERVE_STALE,
            item.item_id,
            subject,
            item.ever_active,
            *last_ok_columns(item.past_due),
            item.past_due.flat(),
            item.past_due_at_ms,
        )

    async def mark_deleted(self, subject: str, at_ms: int) -> bool:
        return bool(
            await self._conn.fetchval(
                """UPDATE subjects SET deleted_at_ms = $2, updated_at = now()
                   WHERE subject = $1 AND (deleted_at_ms IS NULL OR deleted_at_ms < $2)
                   RETURNING true""",
                subject,
                at_ms,
            )
        )

    async def note_created(self, subject: str, at_ms: int) -> None:
        await self._conn.execute(
            """UPDATE subjects SET created_at_ms = LEAST(COALESCE(created_at_ms, $2), $2)
               WHERE subject = $1""",
            subject,
            at_ms,
        )

    async def commit_change(
        self,
        subject: str,
        plan: str,
        previous_plan: str,
        cause_id: str,
        cause_type: str,
        notes: Sequence[str],
    ) -> int:
        return int(
            await self._conn.fetchval(
                COMMIT_CHANGE,
                subject,
                plan,
                self._channel,
                previous_plan,
                cause_id,
                cause_type,
                Outcome.APPLIED.value,
                list(notes),
            )
        )
