"""Manual grants: recorded and applied in one transaction, like a delivery."""

from __future__ import annotations

import uuid
from dataclasses import replace

from service.adapters.postgres.base import (
    Conn,
    StoreBase,
)
from service.adapters.postgres.records import (
    ApplyResult,
    Outcome,
)
from service.adapters.postgres.state_sql import (
    LOCK_SUBJECT,
    commit_change,
    load_subject_states,
)
from service.domain.resolution import (
    Grant,
    SubjectState,
    resolve,
)


class GrantStore(StoreBase):
    async def grant(
        self, subject: str, plan: str, expires_at_ms: int | None, reason: str
    ) -> tuple[str, ApplyResult]:
        """Record a manual grant and apply it, in one transaction; returns its id too."""
        grant_id = "grant_" + uuid.uuid4().hex

        async def work(conn: Conn) -> ApplyResult:
            async with conn.transaction():
                await conn.execute(LOCK_SUBJECT, subject)
                now = self.now_ms()
                state = (await load_subject_states(conn, [subject]))[subject]
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
                await conn.execute(LOCK_SUBJECT, subject)
                state = (await load_subject_states(conn, [subject]))[subject]
                revoked = await conn.fetchval(
                    """UPDATE grants SET revoked_at_ms = $2, revoke_reason = $3
                        WHERE grant_id = $1 AND revoked_at_ms IS NULL RETURNING true""",
                    grant_id,
                    self.now_ms(),
                    reason,
                )
                if not revoked:
                    return None  # revoked concurrently
                after = (await load_subject_states(conn, [subject]))[subject]
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
        version = await commit_change(
            conn, self._channel, subject, before, after, cause_id, cause_type, []
        )
        return ApplyResult(Outcome.APPLIED, subject, after.plan.name, before.plan.name, version)
