"""Stored deliveries (the `deliveries` table): recorded by event id, the idempotency key.
SQL only: what becomes of a delivery is decided in service/application/deliveries.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.adapters.postgres.base import Conn
from service.application.records import DeliverySelector, StoredDelivery
from service.domain.bounds import storable_text, within_window
from service.domain.deliveries import Delivery, Outcome
from service.domain.events import NormalizedEvent
from service.domain.privacy import scrub_payload

# Text columns of a delivery (type, notes) are cut to this before they are stored.
MAX_STORED_TEXT = 1000
DELIVERY_COLUMNS = "event_id, type, payload, outcome, received_at, signed_at_ms, source"

# Record the delivery (PENDING) and, for a subject's event, lock the subject row, in one round
# trip. A duplicate inserts nothing and locks nothing.
_ADD = """
WITH d AS (
    INSERT INTO deliveries (event_id, type, payload, subject, outcome, event_ms, received_at,
                            source, signed_at_ms)
    VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7 / 1000.0), $9, $10)
    ON CONFLICT (event_id) DO NOTHING RETURNING event_id),
s AS (
    INSERT INTO subjects (subject) SELECT $8 FROM d WHERE $8::text IS NOT NULL
    ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject
    RETURNING subject)
SELECT count(*) FROM d
"""
_RECORD = """
INSERT INTO deliveries (event_id, type, payload, subject, outcome, notes, event_ms, received_at,
                        source, signed_at_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8 / 1000.0), $9, $10)
ON CONFLICT (event_id) DO NOTHING RETURNING true
"""


def selector_where(selector: DeliverySelector, first_arg: int) -> tuple[str, tuple[Any, ...]]:
    """The WHERE condition for `selector`, its parameters numbered from `first_arg`."""
    if selector.subject is not None:
        return f"subject = ${first_arg}", (selector.subject,)
    if selector.unparseable:
        return "outcome = 'UNPARSEABLE'", ()
    return "true", ()


async def deliveries_page(
    conn: Conn, selector: DeliverySelector, after: str, limit: int
) -> list[StoredDelivery]:
    where, args = selector_where(selector, 3)
    rows = await conn.fetch(
        f"""SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_id > $1 AND {where}
             ORDER BY event_id LIMIT $2""",
        after,
        limit,
        *args,
    )
    return [StoredDelivery(**dict(r)) for r in rows]


async def count_deliveries(conn: Conn, selector: DeliverySelector) -> int:
    where, args = selector_where(selector, 1)
    return int(await conn.fetchval(f"SELECT count(*) FROM deliveries WHERE {where}", *args))


async def scrub_deliveries(conn: Conn, where: str, *args: Any) -> int:
    rows = await conn.fetch(f"SELECT event_id, payload FROM deliveries {where}", *args)
    if rows:
        await conn.executemany(
            "UPDATE deliveries SET payload = $2, scrubbed_at = now() WHERE event_id = $1",
            [(r["event_id"], scrub_payload(r["payload"])) for r in rows],
        )
    return len(rows)


class PgDeliveries:
    """DeliveryRepository on one connection inside a unit of work's transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add(self, delivery: Delivery, event: NormalizedEvent, lock_subject: bool) -> bool:
        inserted = await self._conn.fetchval(
            _ADD,
            delivery.event_id,
            delivery.type or event.type,
            delivery.payload,
            event.subject,
            Outcome.PENDING.value,
            event.event_ms,
            delivery.received_ms,
            event.subject if lock_subject else None,
            delivery.source,
            delivery.signed_at_ms,
        )
        return bool(inserted)

    async def record(
        self, delivery: Delivery, event: NormalizedEvent, outcome: Outcome, notes: Sequence[str]
    ) -> bool:
        inserted = await self._conn.fetchval(
            _RECORD,
            delivery.event_id,
            storable_text(delivery.type or event.type, MAX_STORED_TEXT),
            delivery.payload,
            event.subject,
            outcome.value,
            [storable_text(n, MAX_STORED_TEXT) for n in notes],
            within_window(event.event_ms),
            delivery.received_ms,
            delivery.source,
            within_window(delivery.signed_at_ms),
        )
        return bool(inserted)

    async def finish(
        self, event_id: str, outcome: Outcome, notes: Sequence[str], subject: str | None
    ) -> None:
        await self._conn.execute(
            "UPDATE deliveries SET outcome = $2, notes = $3, subject = $4 WHERE event_id = $1",
            event_id,
            outcome.value,
            list(notes),
            subject,
        )

    async def subject_of(self, event_id: str) -> str | None:
        subject = await self._conn.fetchval(
            "SELECT subject FROM deliveries WHERE event_id = $1", event_id
        )
        return None if subject is None else str(subject)

    async def get(self, event_id: str, *, for_update: bool = False) -> StoredDelivery | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_id = $1{lock}", event_id
        )
        return None if row is None else StoredDelivery(**dict(row))

    async def set_event_ms(self, event_id: str, event_ms: int | None) -> None:
        await self._conn.execute(
            """UPDATE deliveries SET event_ms = $2
                WHERE event_id = $1 AND event_ms IS DISTINCT FROM $2""",
            event_id,
            event_ms,
        )

    async def mark(self, event_id: str, outcome: Outcome, note: str) -> None:
        await self._conn.execute(
            "UPDATE deliveries SET outcome = $2, notes = array_append(notes, $3) "
            "WHERE event_id = $1",
            event_id,
            outcome.value,
            storable_text(note, MAX_STORED_TEXT),
        )

    async def scrub(self, event_id: str) -> None:
        await scrub_deliveries(self._conn, "WHERE event_id = $1 FOR UPDATE", event_id)

    async def scrub_subject(self, subject: str) -> None:
        await scrub_deliveries(
            self._conn, "WHERE subject = $1 AND scrubbed_at IS NULL FOR UPDATE", subject
        )
