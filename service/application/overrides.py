"""Use cases: set and remove a per-customer override (SPEC §10.2). Each is recorded and applied
in one unit of work, like a grant, gets the subject a new version (so caches, Watch streams and
local caches hear of it) and shows in the subject's history. What an override may name is
checked here, against the catalog; what setting or removing one does to its subject is the
subject aggregate's decision (service/domain/subject.py), which the repository writes."""

from __future__ import annotations

import logging
import uuid

from service.application.deliveries import announce
from service.application.grants import (
    MAX_REASON_CHARS,
    checked_expiry,
    checked_reason,
    commit_subject_change,
)
from service.application.ports import ChangePublisher, Clock, Transactions, UnitOfWork
from service.domain.bounds import INT64_MAX, echo
from service.domain.catalog import Catalog, LimitValue
from service.domain.deliveries import ApplyResult
from service.domain.errors import InvalidArgument, NotFound
from service.domain.resolution import Override
from service.domain.subjects import require_subject

log = logging.getLogger(__name__)


class Overrides:
    def __init__(
        self, transactions: Transactions, catalog: Catalog, clock: Clock, changes: ChangePublisher
    ) -> None:
        self._tx = transactions
        self._catalog = catalog
        self._clock = clock
        self._changes = changes

    def _checked(
        self,
        feature: str,
        limit: str,
        enabled: bool,
        value: int,
        unlimited: bool,
        expires_at_ms: int | None,
        reason: str,
    ) -> Override:
        """The override asked for, or InvalidArgument naming what is wrong."""
        if bool(feature) == bool(limit):
            raise InvalidArgument("exactly one of feature and limit is required")
        if feature and feature not in self._catalog.features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")
        if limit and limit not in self._catalog.limit_names:
            raise InvalidArgument(f"unknown limit {echo(limit)}")
        if limit and not unlimited and not 0 <= value <= INT64_MAX:
            raise InvalidArgument("value must be 0 or more")
        if feature and (value or unlimited):
            raise InvalidArgument("a feature override takes `enabled`, not a value")
        if limit and enabled:
            raise InvalidArgument("a limit override takes `value` or `unlimited`, not `enabled`")
        now = self._clock.now_ms()
        return Override(
            override_id="ovr_" + uuid.uuid4().hex,
            feature=feature or None,
            limit=limit or None,
            created_at_ms=now,
            enabled=enabled,
            value=(LimitValue(unlimited=True) if unlimited else LimitValue(value))
            if limit
            else None,
            expires_at_ms=checked_expiry(expires_at_ms, now),
            reason=checked_reason(reason),
        )

    async def set(
        self,
        subject: str,
        *,
        feature: str = "",
        limit: str = "",
        enabled: bool = False,
        value: int = 0,
        unlimited: bool = False,
        expires_at_ms: int | None = None,
        reason: str = "",
    ) -> tuple[str, ApplyResult]:
        """Put an override on `subject`; its id and the committed change."""
        require_subject(subject)
        override = self._checked(feature, limit, enabled, value, unlimited, expires_at_ms, reason)

        async def work(uow: UnitOfWork) -> ApplyResult:
            await uow.subjects.lock(subject)
            aggregate = await uow.subjects.load(subject)
            now = self._clock.now_ms()
            before = aggregate.entitlements(self._catalog, now)
            await uow.overrides.add(subject, aggregate.set_override(override, now))
            after = aggregate.entitlements(self._catalog, now)
            return await commit_subject_change(uow, before, after, override.override_id, "override")

        result = await self._tx.run(work)
        announce(self._changes, result)
        log.info("override %s on %s", override.override_id, subject)
        return override.override_id, result

    async def remove(self, override_id: str, reason: str) -> ApplyResult:
        if not override_id:
            raise InvalidArgument("override_id is required")
        reason = reason.strip()[:MAX_REASON_CHARS]

        async def work(uow: UnitOfWork) -> ApplyResult | None:
            subject = await uow.overrides.active_subject(override_id)
            if subject is None:
                return None
            await uow.subjects.lock(subject)
            aggregate = await uow.subjects.load(subject)
            now = self._clock.now_ms()
            before = aggregate.entitlements(self._catalog, now)
            if aggregate.remove_override(override_id) is None:
                return None  # removed concurrently
            if not await uow.overrides.remove(override_id, now, reason):
                return None  # removed concurrently (the store's backstop)
            after = aggregate.entitlements(self._catalog, now)
            return await commit_subject_change(uow, before, after, override_id, "remove")

        result = await self._tx.run(work)
        if result is None:
            raise NotFound(f"no override {echo(override_id)} in force")
        announce(self._changes, result)
        log.info("override %s removed (%s)", override_id, result.subject)
        return result
