"""The notification outbox in PostgreSQL (migration 0010): the notifier's transaction, the
delivery workers' claims and outcomes, and what operators list and re-send."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.adapters.postgres.base import Conn, StoreBase
from service.application.notifications import Notice, Notified
from service.application.notify_delivery import Claimed, Outcome, Settled

# The oldest pending delivery of each subject (none of its own pending before it) whose turn
# has come and that no replica holds: each subject's changes go out in order; SKIP LOCKED, then
# the lease, keep two replicas from sending one delivery at once. Every condition is on the row
# that is locked, so a row another replica claimed and committed after this snapshot is re-read
# when locked, fails them and is passed over before the LIMIT counts it. The head test is a
# correlated subquery, one probe of notify_deliveries_pending by (endpoint, subject) per
# candidate, whatever the statistics say: as a join (to a subquery of heads, or an anti-join),
# a table not analysed yet (10 000 rows queued in seconds) was planned as one row and scanned
# once per candidate, 10^8 rows a claim, and claims timed out at 10 s.
CLAIM = """
WITH ready AS (
    SELECT d.id FROM notify_deliveries d
     WHERE d.endpoint = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()
       AND (d.lease_until IS NULL OR d.lease_until < now())
       AND d.id = (SELECT min(p.id) FROM notify_deliveries p
                    WHERE p.endpoint = d.endpoint AND p.subject = d.subject
                      AND p.status = 'pending')
       AND NOT EXISTS (SELECT 1 FROM notify_endpoints e
                        WHERE e.url = $1 AND e.disabled_at IS NOT NULL)
     ORDER BY d.id LIMIT $2
       FOR UPDATE OF d SKIP LOCKED)
UPDATE notify_deliveries d
   SET lease_until = now() + make_interval(secs => $3), attempts = d.attempts + 1,
       last_attempt_at = now()
  FROM ready
 WHERE d.id = ready.id AND d.status = 'pending'
   AND (d.lease_until IS NULL OR d.lease_until < now())
RETURNING d.id, d.message_id, d.subject, d.body, d.attempts
"""

_SETTLE = """
WITH s AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::float8[])
        AS s(id, outcome, status, error, delay)),
upd AS (
    UPDATE notify_deliveries d SET
        status = CASE
            WHEN s.outcome = 'delivered' THEN 'delivered'
            WHEN s.outcome = 'retry' AND now() - d.pending_since > make_interval(secs => $6)
                THEN 'failed'
            ELSE 'pending' END,
        next_attempt_at = CASE WHEN s.outcome = 'retry'
            THEN now() + make_interval(secs => s.delay) ELSE d.next_attempt_at END,
        lease_until = NULL, last_status = s.status, last_error = s.error
      FROM s WHERE d.id = s.id
    RETURNING d.status)
SELECT count(*) FILTER (WHERE status = 'failed') AS failed FROM upd
"""

# One statement: queue each notice for every endpoint, remember what each subject was notified
# as (its newest version), and move the notifier's position.
_RECORD = """
WITH queued AS (
    INSERT INTO notify_deliveries (endpoint, message_id, subject, version, body)
    SELECT e.url, n.message_id, n.subject, n.version, n.body
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY
           AS n(message_id, subject, version, body, ord)
     CROSS JOIN notify_endpoints e
     WHERE e.url = ANY($5::text[])
     ORDER BY n.ord, e.url
        ON CONFLICT (endpoint, message_id) DO NOTHING
    RETURNING 1),
remembered AS (
    INSERT INTO notify_subjects (subject, version, fingerprint, valid_until)
    SELECT DISTINCT ON (s) s, v, f,
           CASE WHEN u IS NULL THEN NULL ELSE to_timestamp(u / 1000.0) END
      FROM unnest($6::text[], $7::bigint[], $8::text[], $9::bigint[]) AS n(s, v, f, u)
     ORDER BY s, v DESC
        ON CONFLICT (subject) DO UPDATE
       SET version = EXCLUDED.version, fingerprint = EXCLUDED.fingerprint,
           valid_until = EXCLUDED.valid_until
     WHERE notify_subjects.version <= EXCLUDED.version),
moved AS (UPDATE notify_state SET position = $10)
SELECT count(*) FROM queued
"""


@dataclass
class _Scan:
    """The notifier's transaction (it holds the notify_state row)."""

    conn: Conn
    position: int | None
    endpoints: list[str]

    async def due(self, now_ms: int, limit: int) -> list[str]:
        rows = await self.conn.fetch(
            """SELECT subject FROM notify_subjects
                WHERE valid_until <= to_timestamp($1 / 1000.0)
                ORDER BY valid_until LIMIT $2""",
            now_ms,
            limit,
        )
        return [r["subject"] for r in rows]

    async def notified(self, subjects: Sequence[str]) -> dict[str, Notified]:
        rows = await self.conn.fetch(
            "SELECT subject, version, fingerprint FROM notify_subjects WHERE subject = ANY($1)",
            list(subjects),
        )
        return {r["subject"]: Notified(int(r["version"]), r["fingerprint"]) for r in rows}

    async def record(self, notices: Sequence[Notice], seen: Sequence[Notice], position: int) -> int:
        remembered = [*notices, *seen]
        queued = await self.conn.fetchval(
            _RECORD,
            [n.message_id for n in notices],
            [n.subject for n in notices],
            [n.version for n in notices],
            [n.body for n in notices],
            self.endpoints,
            [n.subject for n in remembered],
            [n.version for n in remembered],
            [n.fingerprint for n in remembered],
            [n.valid_until_ms for n in remembered],
            position,
        )
        return int(queued or 0)


class NotifyStore(StoreBase):
    _notify_endpoints_known: frozenset[str] = frozenset()

    @asynccontextmanager
    async def scanning(self, endpoints: Sequence[str]) -> AsyncIterator[_Scan | None]:
        """The notifier's transaction, or None while another replica's notifier holds it."""
        self.calls += 1
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT position FROM notify_state FOR UPDATE SKIP LOCKED")
            if row is None:
                yield None
                return
            if self._notify_endpoints_known != frozenset(endpoints):
                await conn.execute(
                    """INSERT INTO notify_endpoints (url) SELECT unnest($1::text[])
                           ON CONFLICT (url) DO NOTHING""",
                    list(endpoints),
                )
                self._notify_endpoints_known = frozenset(endpoints)
            position = row["position"]
            yield _Scan(conn, None if position is None else int(position), list(endpoints))

    async def claim(self, endpoint: str, limit: int, lease_seconds: float) -> list[Claimed]:
        async def work(conn: Conn) -> list[Claimed]:
            rows = await conn.fetch(CLAIM, endpoint, limit, lease_seconds)
            return sorted(
                (
                    Claimed(int(r["id"]), r["message_id"], r["subject"], r["body"], r["attempts"])
                    for r in rows
                ),
                key=lambda c: c.id,
            )

        return await self._run(work)

    async def settle(
        self, endpoint: str, settled: Sequence[Settled], give_up_seconds: float
    ) -> int:
        """Record the outcomes; returns how many were given up (failed)."""

        async def work(conn: Conn) -> int:
            gone = any(s.outcome is Outcome.GONE for s in settled)
            async with conn.transaction() if gone else contextlib.nullcontext():
                failed = await conn.fetchval(
                    _SETTLE,
                    [s.id for s in settled],
                    [s.outcome.value for s in settled],
                    [s.status for s in settled],
                    [s.error for s in settled],
                    [s.retry_in_seconds for s in settled],
                    give_up_seconds,
                )
                if gone:
                    await conn.execute(
                        """UPDATE notify_endpoints SET disabled_at = now(),
                                  disabled_reason = 'answered 410 Gone'
                            WHERE url = $1 AND disabled_at IS NULL""",
                        endpoint,
                    )
                return int(failed or 0)

        return await self._run(work)

    async def oldest_pending_seconds(self) -> float:
        async def work(conn: Conn) -> float:
            value = await conn.fetchval(
                """SELECT extract(epoch FROM now() - min(d.pending_since))::float8
                     FROM notify_deliveries d JOIN notify_endpoints e ON e.url = d.endpoint
                    WHERE d.status = 'pending' AND e.disabled_at IS NULL"""
            )
            return float(value or 0.0)

        return await self._run(work)

    async def prune_notifications(self, retention_seconds: float) -> int:
        """Forget delivered and failed notifications older than the retention."""

        async def work(conn: Conn) -> int:
            status = await conn.execute(
                """DELETE FROM notify_deliveries WHERE status <> 'pending'
                      AND created_at < now() - make_interval(secs => $1)""",
                retention_seconds,
            )
            return int(status.split()[-1])

        return await self._run(work)
