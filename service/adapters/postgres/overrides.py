"""Per-customer overrides (the `overrides` table, and `override_events`, the log of every set
and remove that `verify` rebuilds the table from; both written by one statement).

SQL only: the rules are in service/application/overrides.py and the domain."""

from __future__ import annotations

from service.adapters.postgres.base import Conn
from service.domain.resolution import Override

_ADD = """
WITH o AS (
    INSERT INTO overrides (override_id, subject, feature, limit_name, enabled, limit_value,
                           unlimited, reason, created_at_ms, expires_at_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING override_id)
INSERT INTO override_events (override_id, kind, subject, feature, limit_name, enabled,
                             limit_value, unlimited, reason, at_ms, expires_at_ms)
SELECT override_id, 'set', $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM o
"""
_REMOVE = """
WITH r AS (
    UPDATE overrides SET removed_at_ms = $2, remove_reason = $3
     WHERE override_id = $1 AND removed_at_ms IS NULL RETURNING override_id),
e AS (
    INSERT INTO override_events (override_id, kind, reason, at_ms)
    SELECT override_id, 'remove', $3, $2 FROM r)
SELECT EXISTS (SELECT 1 FROM r)
"""


class PgOverrides:
    """OverrideRepository on one connection inside a unit of work's transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add(self, subject: str, override: Override) -> None:
        value = override.value
        await self._conn.execute(
            _ADD,
            override.override_id,
            subject,
            override.feature,
            override.limit,
            override.enabled,
            None if value is None or value.unlimited else value.value,
            value is not None and value.unlimited,
            override.reason,
            override.created_at_ms,
            override.expires_at_ms,
        )

    async def active_subject(self, override_id: str) -> str | None:
        subject = await self._conn.fetchval(
            "SELECT subject FROM overrides WHERE override_id = $1 AND removed_at_ms IS NULL",
            override_id,
        )
        return None if subject is None else str(subject)

    async def remove(self, override_id: str, at_ms: int, reason: str) -> bool:
        return bool(await self._conn.fetchval(_REMOVE, override_id, at_ms, reason))
