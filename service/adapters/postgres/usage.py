"""Usage of metered limits (usage_counters, usage_records, usage_reservations). SQL only: the
rules (periods, what fits, what a reservation holds) are in service/domain/usage.py.

The counter row is the lock: every call on one subject's meter takes it first, so concurrent
consumers on any number of replicas are serialised there and the limit is never passed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from service.adapters.postgres.base import Conn, StoreBase
from service.domain.consumption import Recorded
from service.domain.usage import Answer, Counter, Kind, Period, Reservation

# Made when new, locked either way, in (subject, meter) order so that two batches never wait
# on each other in a cycle (one statement; the row locks last until commit).
LOCK_COUNTERS = """
INSERT INTO usage_counters (subject, meter, period_start_ms, period_end_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) ORDER BY 1, 2
ON CONFLICT (subject, meter) DO UPDATE SET subject = EXCLUDED.subject
RETURNING subject, meter, period_start_ms, period_end_ms, used
"""
# A later statement (a new snapshot, after the locks were granted): what live reservations
# hold on each locked counter, and the answer a call with each key got before (a Reserve's
# with its reservation's expiry, as first answered).
HELD_AND_PRIOR = """
WITH calls AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
           AS k(subject, meter, key, n))
SELECT c.n,
       (SELECT COALESCE(sum(amount), 0)::bigint FROM usage_reservations r
         WHERE r.subject = c.subject AND r.meter = c.meter AND r.state = 'held'
           AND r.expires_at_ms > $4) AS held,
       (SELECT json_build_array(allowed, used_after, remaining_after, unlimited, limit_value,
                                period_start_ms, resets_at_ms, reservation_id,
                                CASE WHEN u.kind = 'reserve' THEN
                                    (SELECT v.expires_at_ms FROM usage_reservations v
                                      WHERE v.reservation_id = u.reservation_id) END)
          FROM usage_records u
         WHERE u.subject = c.subject AND u.meter = c.meter AND u.idempotency_key = c.key
       ) AS prior
  FROM calls c ORDER BY c.n
"""
# Each counter's final state, and every call recorded in the order it was applied (seq).
SAVE = """
WITH c AS (
    UPDATE usage_counters u SET period_start_ms = t.start_ms, period_end_ms = t.end_ms,
                                used = t.used, updated_at = now()
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
           AS t(subject, meter, start_ms, end_ms, used)
     WHERE u.subject = t.subject AND u.meter = t.meter)
INSERT INTO usage_records (subject, meter, idempotency_key, kind, amount, allowed, used_after,
                           remaining_after, unlimited, limit_value, period_start_ms,
                           resets_at_ms, reservation_id, recorded_at_ms)
SELECT subject, meter, key, kind, amount, allowed, used_after, remaining_after, unlimited,
       limit_value, start_ms, end_ms, reservation_id, $19
  FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::boolean[],
              $12::bigint[], $13::bigint[], $14::boolean[], $15::bigint[], $16::bigint[],
              $17::bigint[], $18::text[])
       WITH ORDINALITY AS r(subject, meter, key, kind, amount, allowed, used_after,
                            remaining_after, unlimited, limit_value, start_ms, end_ms,
                            reservation_id, n)
 ORDER BY n
"""
COUNTERS = """
SELECT c.meter, c.period_start_ms, c.period_end_ms, c.used,
       (SELECT COALESCE(sum(r.amount), 0)::bigint FROM usage_reservations r
         WHERE r.subject = c.subject AND r.meter = c.meter AND r.state = 'held'
           AND r.expires_at_ms > $2) AS held
  FROM usage_counters c WHERE c.subject = $1
"""


def _answer(raw: list[Any]) -> Answer:
    allowed, used, remaining, unlimited, value, start, end, reservation_id, expires = raw
    return Answer(
        bool(allowed),
        used,
        remaining,
        bool(unlimited),
        value,
        Period(start, end),
        reservation_id,
        expires,
    )


class PgUsage:
    """UsageRepository on one connection inside a unit of work's transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def lock(
        self, subject: str, meter: str, period: Period, now_ms: int, key: str | None
    ) -> tuple[Counter, Answer | None]:
        counters, priors = await self.lock_many(
            [(subject, meter, period)], [(subject, meter, key or "")], now_ms
        )
        return counters[(subject, meter)], priors[0] if key else None

    async def lock_many(
        self,
        counters: Sequence[tuple[str, str, Period]],
        calls: Sequence[tuple[str, str, str]],
        now_ms: int,
    ) -> tuple[dict[tuple[str, str], Counter], list[Answer | None]]:
        rows = await self._conn.fetch(
            LOCK_COUNTERS,
            [c[0] for c in counters],
            [c[1] for c in counters],
            [c[2].start_ms for c in counters],
            [c[2].end_ms for c in counters],
        )
        # A counter no call names still gets what its reservations hold (key "": no answer,
        # keys are never empty).
        named = {(s, m) for s, m, _ in calls}
        asked = [*calls, *((s, m, "") for s, m, _ in counters if (s, m) not in named)]
        extra = await self._conn.fetch(
            HELD_AND_PRIOR,
            [c[0] for c in asked],
            [c[1] for c in asked],
            [c[2] for c in asked],
            now_ms,
        )
        held = {(s, m): e["held"] for (s, m, _), e in zip(asked, extra, strict=True)}
        locked = {
            (r["subject"], r["meter"]): Counter(
                Period(r["period_start_ms"], r["period_end_ms"]),
                r["used"],
                held.get((r["subject"], r["meter"]), 0),
            )
            for r in rows
        }
        priors = [
            _answer(json.loads(e["prior"])) if e["prior"] else None for e in extra[: len(calls)]
        ]
        return locked, priors

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
        await self.save_many([Recorded(subject, meter, counter, kind, key, amount, answer)], at_ms)

    async def save_many(self, records: Sequence[Recorded], at_ms: int) -> None:
        final = {(r.subject, r.meter): r.counter for r in records}
        await self._conn.execute(
            SAVE,
            [s for s, _ in final],
            [m for _, m in final],
            [c.period.start_ms for c in final.values()],
            [c.period.end_ms for c in final.values()],
            [c.used for c in final.values()],
            [r.subject for r in records],
            [r.meter for r in records],
            [r.key for r in records],
            [r.kind.value for r in records],
            [r.amount for r in records],
            [r.answer.allowed for r in records],
            [r.answer.used for r in records],
            [r.answer.remaining for r in records],
            [r.answer.unlimited for r in records],
            [r.answer.limit_value for r in records],
            [r.counter.period.start_ms for r in records],
            [r.counter.period.end_ms for r in records],
            [r.answer.reservation_id for r in records],
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


# The roll-up walks the counters (one row per subject and limit) in key order, a batch at a
# time, so each pass reads only its own subjects' records (through the order index, partial on
# `seq > 0`: migration 0009), never the whole table: O(records) in all, however many batches.
NEXT_COUNTERS = """
SELECT subject, meter FROM usage_counters WHERE (subject, meter) > ($1, $2)
 ORDER BY subject, meter LIMIT $3
"""
# For each of those (subject, meter) with records past the retention: everything up to its
# newest such record becomes one `set` record of the total reached there (same seq, so the
# order holds, and verify's replay arrives at the same counter).
ROLL_UP = """
WITH old AS (
    SELECT p.subject, p.meter,
           (SELECT max(r.seq) FROM usage_records r
             WHERE r.subject = p.subject AND r.meter = p.meter AND r.seq > 0
               AND r.recorded_at < now() - make_interval(secs => $3)
               AND r.idempotency_key NOT LIKE 'rollup:%') AS top
      FROM unnest($1::text[], $2::text[]) AS p(subject, meter)),
last AS (
    SELECT r.* FROM usage_records r JOIN old ON (r.subject, r.meter, r.seq) = (old.subject,
                                                                             old.meter, old.top)
     WHERE r.seq > 0),
gone AS (
    DELETE FROM usage_records r USING old
     WHERE r.subject = old.subject AND r.meter = old.meter AND r.seq <= old.top AND r.seq > 0
    RETURNING 1),
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
        """Records past the retention rolled up, a batch of counters per transaction; the
        number of records replaced."""
        total = 0
        after = ("", "")
        while True:

            async def work(
                conn: Conn, after: tuple[str, str] = after
            ) -> tuple[int, tuple[str, str] | None]:
                async with conn.transaction():
                    pairs = await conn.fetch(NEXT_COUNTERS, *after, batch)
                    if not pairs:
                        return 0, None
                    gone = await conn.fetchval(
                        ROLL_UP,
                        [p["subject"] for p in pairs],
                        [p["meter"] for p in pairs],
                        retention_seconds,
                    )
                    return int(gone), (pairs[-1]["subject"], pairs[-1]["meter"])

            gone, last = await self._run(work)
            total += gone
            if last is None:
                return total
            after = last

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
