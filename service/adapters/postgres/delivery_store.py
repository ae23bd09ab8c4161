"""Applying a delivery: recorded by its svix-id in the same transaction as the state change it
causes (a retry is a DUPLICATE); the subject row is locked first, so one subject's deliveries
serialise; a delivery that cannot be applied is stored UNPARSEABLE instead."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from service.adapters.postgres.base import (
    Conn,
    StoreBase,
)
from service.adapters.postgres.records import (
    MAX_STORED_TEXT,
    ApplyResult,
    ItemOwnedElsewhere,
    Outcome,
    StoreUnavailable,
)
from service.adapters.postgres.state_sql import (
    OBSERVE_STALE,
    SUBJECT_KINDS,
    commit_change,
    last_ok_columns,
    load_subject_states,
    scrub_deliveries,
    upsert_item,
    visible_answer,
)
from service.domain.bounds import echo, storable_text, within_window
from service.domain.events import EventKind, NormalizedEvent
from service.domain.resolution import (
    ItemState,
    SubjectState,
    item_after_stale,
    item_after_update,
    resolve,
    with_items,
)

log = logging.getLogger(__name__)


class DeliveryStore(StoreBase):
    # ---- reads -------------------------------------------------------------------------

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        """The stored state of each subject (unknown subjects get an empty state)."""
        unique = list(dict.fromkeys(subjects))

        async def work(conn: Conn) -> dict[str, SubjectState]:
            return await load_subject_states(conn, unique)

        return await self._run(work)

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
        except ItemOwnedElsewhere as exc:
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
            event.subject if event.kind in SUBJECT_KINDS else None,
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
                await scrub_deliveries(conn, "WHERE event_id = $1 FOR UPDATE", event_id)
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
        state = (await load_subject_states(conn, [subject]))[subject]
        ent = resolve(state, self.catalog, self.now_ms())
        return ApplyResult(Outcome.DUPLICATE, subject, ent.plan.name, ent.plan.name, state.version)

    async def _apply_to_subject(
        self, conn: Conn, event_id: str, event: NormalizedEvent, notes: list[str]
    ) -> ApplyResult:
        assert event.subject is not None
        subject = event.subject
        # The subject row is locked (see _apply_in_tx): concurrent deliveries for one subject
        # serialise there, so this read sees every earlier change.
        state = (await load_subject_states(conn, [subject]))[subject]
        if state.deleted_at_ms is not None or event.kind is EventKind.SUBJECT_DELETED:
            # A deleted subject's stored payloads keep no personal data (late arrivals too).
            await scrub_deliveries(
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
                if await upsert_item(
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
                    raise ItemOwnedElsewhere(
                        f"item {echo(update.item_id)} belongs to another subject; "
                        "the delivery changed nothing"
                    )
                seen = item_after_stale(old, update)
                if seen != old:
                    await conn.execute(
                        OBSERVE_STALE,
                        seen.item_id,
                        subject,
                        seen.ever_active,
                        *last_ok_columns(seen.past_due),
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
                and visible_answer(resolve(after_state, self.catalog, now))
                != visible_answer(before)
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
        version = await commit_change(
            conn, self._channel, subject, before, after, event_id, event.type, notes
        )
        return ApplyResult(
            Outcome.APPLIED, subject, after.plan.name, before.plan.name, version, recorded=True
        )
