"""Usage of metered limits (usage_counters, usage_records, usage_reservations). SQL only: the
rules (periods, what fits, what a reservation holds) are in service/domain/usage.py.

The counter row is the lock: every call on one subject's meter takes it first, so concurrent
consumers on any number of replicas are serialised there and the limit is never passed.
"""

from __future__ import annotations

import json
from typing import Any

from service.adapters.postgres.base import Conn, StoreBase
from service.domain.usage import Answer, Counter, Kind, Period, Reservation

# Made when new, locked either way (one statement; the row lock lasts until commit).
LOCK_COUNTER = """
INSERT INTO usage_counters (subject, meter, period_start_ms, period_end_ms)
VALUES ($1, $2, $3, $4)
ON CONFLICT (subject, meter) DO UPDATE SET subject = EXCLUDED.subject
RETURNING period_start_ms, period_end_ms, used
"""
# A later statement (a new snapshot, after the lock was granted): what live reservations hold,
# and the answer a call with this key got before.
HELD_AND_PRIOR = """
SELECT (SELECT COALESCE(sum(amount), 0)::bigint FROM usage_reservations
         WHERE subject = $1 AND meter = $2 AND state = 'held' AND expires_at_ms > $3) AS held,
       (SELECT json_build_array(allowed, used_after, remaining_after, unlimited, limit_value,
                                period_start_ms, resets_at_ms, reservation_id)
          FROM usage_records
         WHERE subject = $1 AND meter = $2 AND idempotency_key = $4) AS prior
"""
SAVE = """
WITH c AS (
    UPDATE usage_counters SET period_start_ms = $3, period_end_ms = $4, used = $5,
                              updated_at = now()
     WHERE subject = $1 AND meter = $2)
INSERT INTO usage_records (subject, meter, idempotency_key, kind, amount, allowed, used_after,
                           remaining_after, unlimited, limit_value, period_start_ms,
                           resets_at_ms, reservation_id, recorded_at_ms)
VALUES ($1, $2, $6, $7, $8, $9, $10, $11, $12, $13, $3, $4, $14, $15)
"""
COUNTERS = """
SELECT c.meter, c.period_start_ms, c.period_end_ms, c.used,
       (SELECT COALESCE(sum(r.amount), 0)::bigint FROM usage_reservations r
         WHERE r.subject = c.subject AND r.meter = c.meter AND r.state = 'held'
           AND r.expires_at_ms > $2) AS held
  FROM usage_counters c WHERE c.subject = $1
"""


def _answer(raw: list[Any]) -> Answer:
    allowed, used, remaining, unlimited, value, start, end, reservation_id = raw
    return Answer(
        bool(allowed), used, remaining, bool(unlimited), value, Period(start, end), reservation_id
    )


class PgUsage:
    """UsageRepository on one connection inside a unit of work's transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def lock(
        self, subject: str, meter: str, period: Period, now_ms: int, key: str | None
    ) -> tuple[Counter, Answer | None]:
        row = await self._conn.fetchrow(
            LOCK_COUNTER, subject, meter, period.start_ms, period.end_ms
        )
        assert row is not None
        extra = await self._conn.fetchrow(HELD_AND_PRIOR, subject, meter, now_ms, key or "")
        assert extra is not None
        counter = Counter(
            Period(row["period_start_ms"], row["period_end_ms"]), row["used"], extra["held"]
        )
        prior = _answer(json.loads(extra["prior"])) if key and extra["prior"] else None
        return counter, prior

    async def save(
        self,
        subject: str,
        meter: str,
        counter: Counter,
        kind: Kind,
        key: str,
        amount: int,
        answer: Answer,
        at_ms: int,
    ) -> None:
        await self._conn.execute(
            SAVE,
            subject,
            meter,
            counter.period.start_ms,
            counter.period.end_ms,
            counter.used,
            key,
            kind.value,
            amount,
            answer.allowed,
            answer.used,
            answer.remaining,
            answer.unlimited,
            answer.limit_value,
            answer.reservation_id,
            at_ms,
        )

    async def hold(self, reservation: Reservation) -> None:
        await self._conn.execute(
            """INSERT INTO usage_reservations (reservation_id, subject, meter, amount,
                                               expires_at_ms)
               VALUES ($1, $2, $3, $4, $5)""",
            reservation.reservation_id,
            reservation.subject,
            reservation.meter,
            reservation.amount,
            reservation.expires_at_ms,
        )

    async def reservation(self, reservation_id: str) -> Reservation | None:
        row = await self._conn.fetchrow(
            """SELECT subject, meter, amount, expires_at_ms, state FROM usage_reservations
                WHERE reservation_id = $1 FOR UPDATE""",
            reservation_id,
        )
        if row is None:
            return None
        return Reservation(
            reservation_id,
            row["subject"],
            row["meter"],
            row["amount"],
            row["expires_at_ms"],
            row["state"] == "held",
        )

    async def finish(self, reservation_id: str, committed_amount: int | None) -> None:
        await self._conn.execute(
            """UPDATE usage_reservations SET state = $2, committed_amount = $3
                WHERE reservation_id = $1 AND state = 'held'""",
            reservation_id,
            "released" if committed_amount is None else "committed",
            committed_amount,
        )


# Per (subject, meter) with records past the retention: everything up to its newest such record
# becomes one `set` record of the total reached there (same seq, so the order holds).
ROLL_UP = """
WITH old AS (
    SELECT subject, meter, max(seq) AS top FROM usage_records
     WHERE recorded_at < now() - make_interval(secs => $1)
       AND idempotency_key NOT LIKE 'rollup:%'
     GROUP BY subject, meter LIMIT $2),
last AS (
    SELECT r.* FROM usage_records r JOIN old ON (r.subject, r.meter, r.seq) = (old.subject,
                                                                             old.meter, old.top)),
gone AS (
    DELETE FROM usage_records r USING old
     WHERE r.subject = old.subject AND r.meter = old.meter AND r.seq <= old.top RETURNING 1),
kept AS (
    INSERT INTO usage_records (seq, subject, meter, idempotency_key, kind, amount, allowed,
                               used_after, remaining_after, unlimited, limit_value,
                               period_start_ms, resets_at_ms, recorded_at_ms, recorded_at)
    SELECT seq, subject, meter, 'rollup:' || seq, 'set', used_after, true, used_after,
           remaining_after, unlimited, limit_value, period_start_ms, resets_at_ms,
           recorded_at_ms, recorded_at
      FROM last)
SELECT count(*) FROM gone
"""


class UsageStore(StoreBase):
    """UsageReader over the pool (GetUsage and the usage shown with entitlements), and the
    roll-up of old records (housekeeping)."""

    async def roll_up_usage(self, retention_seconds: float, batch: int = 1000) -> int:
        total = 0
        while True:

            async def work(conn: Conn) -> int:
                async with conn.transaction():
                    return int(await conn.fetchval(ROLL_UP, retention_seconds, batch))

            gone = await self._run(work)
            total += gone
            if gone == 0:
                return total

    async def counters(self, subject: str, now_ms: int) -> dict[str, Counter]:
        async def work(conn: Conn) -> dict[str, Counter]:
            rows = await conn.fetch(COUNTERS, subject, now_ms)
            return {
                r["meter"]: Counter(
                    Period(r["period_start_ms"], r["period_end_ms"]), r["used"], r["held"]
                )
                for r in rows
            }

        return await self._run(work)
