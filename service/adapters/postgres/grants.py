"""Manual grants (the `grants` table). SQL only: see service/application/grants.py."""

from __future__ import annotations

from service.adapters.postgres.base import Conn
from service.domain.resolution import Grant


class PgGrants:
    """GrantRepository on one connection inside a unit of work's transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def add(self, grant_id: str, subject: str, grant: Grant, reason: str) -> None:
        await self._conn.execute(
            """INSERT INTO grants (grant_id, subject, plan, reason, granted_at_ms, expires_at_ms)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            grant_id,
            subject,
            grant.plan,
            reason,
            grant.granted_at_ms,
            grant.expires_at_ms,
        )

    async def active_subject(self, grant_id: str) -> str | None:
        subject = await self._conn.fetchval(
            "SELECT subject FROM grants WHERE grant_id = $1 AND revoked_at_ms IS NULL", grant_id
        )
        return None if subject is None else str(subject)

    async def revoke(self, grant_id: str, at_ms: int, reason: str) -> bool:
        return bool(
            await self._conn.fetchval(
                """UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3
                    WHERE grant_id = $1 AND revoked_at_ms IS NULL RETURNING true""",
                grant_id,
                at_ms,
                reason,
            )
        )
