"""Use cases: grant a plan by hand, revoke a grant. Each is recorded and applied in one unit of
work, like a delivery, and shows in the subject's history."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from service.application.deliveries import announce
from service.application.ports import ChangePublisher, Clock, Transactions, UnitOfWork
from service.domain.bounds import echo, wire_ms
from service.domain.catalog import Catalog
from service.domain.deliveries import ApplyResult, Outcome
from service.domain.errors import InvalidArgument, NotFound
from service.domain.resolution import Entitlements, Grant, SubjectState, resolve
from service.domain.subjects import require_subject

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500


def checked_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise InvalidArgument(f"reason is required (at most {MAX_REASON_CHARS} characters)")
    return reason


def checked_expiry(expires_at_ms: int | None, now_ms: int) -> int | None:
    if expires_at_ms is not None and wire_ms(expires_at_ms) is None:
        raise InvalidArgument("expires_at must be a valid timestamp (before year 10000)")
    if expires_at_ms is not None and expires_at_ms <= now_ms:
        raise InvalidArgument("expires_at must be in the future")
    return expires_at_ms


class Grants:
    def __init__(
        self,
        transactions: Transactions,
        catalog: Catalog,
        clock: Clock,
        changes: ChangePublisher,
    ) -> None:
        self._tx = transactions
        self._catalog = catalog
        self._clock = clock
        self._changes = changes

    async def grant(
        self, subject: str, plan: str, expires_at_ms: int | None, reason: str
    ) -> tuple[str, ApplyResult]:
        """Give `subject` the plan until `expires_at_ms` (None: until revoked); the grant's
        id and the result."""
        require_subject(subject)
        if plan not in self._catalog.plans:
            raise InvalidArgument(f"unknown plan {echo(plan)}")
        reason = checked_reason(reason)
        checked_expiry(expires_at_ms, self._clock.now_ms())
        grant_id = "grant_" + uuid.uuid4().hex

        async def work(uow: UnitOfWork) -> ApplyResult:
            await uow.subjects.lock(subject)
            now = self._clock.now_ms()
            state = (await uow.subjects.states([subject]))[subject]
            grant = Grant(plan, now, expires_at_ms)
            await uow.grants.add(grant_id, subject, grant, reason)
            after = replace(state, grants=(*state.grants, grant))
            return await self._commit(uow, state, after, grant_id, "grant")

        result = await self._tx.run(work)
        announce(self._changes, result)
        log.info("grant %s: %s for %s", grant_id, plan, subject)
        return grant_id, result

    async def revoke(self, grant_id: str, reason: str) -> ApplyResult:
        if not grant_id:
            raise InvalidArgument("grant_id is required")

        async def work(uow: UnitOfWork) -> ApplyResult | None:
            subject = await uow.grants.active_subject(grant_id)
            if subject is None:
                return None
            await uow.subjects.lock(subject)
            state = (await uow.subjects.states([subject]))[subject]
            if not await uow.grants.revoke(grant_id, self._clock.now_ms(), reason.strip()):
                return None  # revoked concurrently
            after = (await uow.subjects.states([subject]))[subject]
            return await self._commit(uow, state, after, grant_id, "revoke")

        result = await self._tx.run(work)
        if result is None:
            raise NotFound(f"no active grant {echo(grant_id)}")
        announce(self._changes, result)
        log.info("grant %s revoked (%s)", grant_id, result.subject)
        return result

    async def _commit(
        self,
        uow: UnitOfWork,
        before_state: SubjectState,
        after_state: SubjectState,
        cause_id: str,
        cause_type: str,
    ) -> ApplyResult:
        now = self._clock.now_ms()
        return await commit_subject_change(
            uow,
            resolve(before_state, self._catalog, now),
            resolve(after_state, self._catalog, now),
            cause_id,
            cause_type,
        )


async def commit_subject_change(
    uow: UnitOfWork, before: Entitlements, after: Entitlements, cause_id: str, cause_type: str
) -> ApplyResult:
    """A hand-made change (grant, override) committed as a new version of the subject."""
    subject = before.subject
    version = await uow.subjects.commit_change(
        subject, after.plan.name, before.plan.name, cause_id, cause_type, []
    )
    return ApplyResult(
        Outcome.APPLIED, subject, after.plan.name, before.plan.name, version, committed=True
    )
