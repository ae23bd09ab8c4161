"""The status use case (service/application/status.py) over in-memory ports: an unreachable
database is part of the report (not serving), not an error; the window is bounded."""

from __future__ import annotations

from typing import cast

import pytest

from service.application.ports import ChangeLog, Operations, StoreUnavailable
from service.application.status import Liveness, ServiceStatus
from service.config import load_catalog
from service.domain.errors import InvalidArgument
from service.domain.unknown_plans import NotedDelivery, UnknownPlanPolicy
from tests.support.fakes import FakeClock

pytestmark = pytest.mark.unit

NOTE = "unknown plan slug 'x' (id 'cplan_x'): not applied, the subject keeps its plan"


class Stored:
    """The two reads the status makes; `down` makes both fail as an unreachable database."""

    def __init__(self) -> None:
        self.down = False
        self.asked: list[tuple[int, int]] = []

    async def unknown_plan_deliveries(self, hours: int, limit: int) -> list[NotedDelivery]:
        if self.down:
            raise StoreUnavailable("down")
        self.asked.append((hours, limit))
        return [NotedDelivery("evt_1", "user_1", 1, (NOTE,))]

    async def change_log_identity(self) -> str:
        if self.down:
            raise StoreUnavailable("down")
        return "log-from-the-database"


def status(stored: Stored, live: Liveness) -> ServiceStatus:
    return ServiceStatus(
        cast(Operations, stored),
        cast(ChangeLog, stored),
        load_catalog(None),
        FakeClock(),
        UnknownPlanPolicy.KEEP,
        lambda: live,
    )


async def test_serving_with_sightings_then_not_serving_without_an_error() -> None:
    stored = Stored()
    starting = await status(stored, Liveness(False, False, ""))()
    assert starting.serving and starting.log_id == "log-from-the-database"
    assert [(s.slug, s.deliveries, s.note) for s in starting.unknown_plans] == [("x", 1, NOTE)]
    assert stored.asked == [(168, 10_000)] and starting.unknown_plan_policy == "keep"
    stored.down = True
    down = await status(stored, Liveness(True, False, "log-followed"))(24)
    assert not down.serving and down.unknown_plans == [] and down.log_id == "log-followed"
    assert down.window_hours == 24 and down.following


@pytest.mark.parametrize("hours", [-1, 90 * 24 + 1])
async def test_a_window_out_of_bounds_is_refused(hours: int) -> None:
    with pytest.raises(InvalidArgument, match="window_hours"):
        await status(Stored(), Liveness(True, True, "l"))(hours)
