"""Use case: what an operator looks at first (`entitlements status`): whether this replica
serves, the change log and catalog its streams carry, and the Clerk plans the catalog lacks
that stored deliveries named recently (ENTITLEMENTS_UNKNOWN_PLAN): read from the deliveries'
notes, so every replica answers alike and nothing is lost on a restart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.application.ports import ChangeLog, Clock, Operations, StoreUnavailable
from service.domain.catalog import Catalog
from service.domain.errors import InvalidArgument
from service.domain.unknown_plans import Sighting, UnknownPlanPolicy, sightings

DEFAULT_WINDOW_HOURS = 7 * 24
MAX_WINDOW_HOURS = 90 * 24
# Deliveries read for the sightings: past this the counts are lower bounds (and say so).
MAX_NOTED_DELIVERIES = 10_000


@dataclass(frozen=True)
class Liveness:
    """What this replica knows of itself, outside the database."""

    following: bool  # Watch streams follow the change log
    listening: bool  # the change listener is connected
    log_id: str  # "" until the follower has started


@dataclass(frozen=True)
class StatusReport:
    serving: bool
    following: bool
    listening: bool
    log_id: str
    catalog_fingerprint: str
    unknown_plan_policy: str
    window_hours: int
    unknown_plans: list[Sighting]
    truncated: bool
    now_ms: int


class ServiceStatus:
    def __init__(
        self,
        operations: Operations,
        change_log: ChangeLog,
        catalog: Catalog,
        clock: Clock,
        policy: UnknownPlanPolicy,
        liveness: Callable[[], Liveness],
    ) -> None:
        self._operations = operations
        self._change_log = change_log
        self._catalog = catalog
        self._clock = clock
        self._policy = policy
        self._liveness = liveness

    async def __call__(self, window_hours: int = 0) -> StatusReport:
        """The report; an unreachable database is part of it (serving false), not an error."""
        if not 0 <= window_hours <= MAX_WINDOW_HOURS:
            raise InvalidArgument(f"window_hours must be 0 (a week) to {MAX_WINDOW_HOURS}")
        hours = window_hours or DEFAULT_WINDOW_HOURS
        now = self._clock.now_ms()
        live = self._liveness()
        log_id = live.log_id
        try:
            noted = await self._operations.unknown_plan_deliveries(hours, MAX_NOTED_DELIVERIES)
            log_id = log_id or await self._change_log.change_log_identity()
            serving = True
        except StoreUnavailable:
            noted, serving = [], False
        return StatusReport(
            serving=serving,
            following=live.following,
            listening=live.listening,
            log_id=log_id,
            catalog_fingerprint=self._catalog.fingerprint,
            unknown_plan_policy=self._policy.value,
            window_hours=hours,
            unknown_plans=sightings(noted),
            truncated=len(noted) >= MAX_NOTED_DELIVERIES,
            now_ms=now,
        )
