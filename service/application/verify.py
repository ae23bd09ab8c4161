"""Use case: verify the live state by rebuilding it from the stored log with the current rules
(in memory, service/domain/rebuild.py) and comparing the two: items and plans from the stored
deliveries, usage counters from the recorded calls, overrides from their log.

Both the log and the live state are read from one snapshot, so writes during the run cannot
show up as differences.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from service.application.deliveries import read_stored
from service.application.ports import Clock, Operations, Snapshot
from service.application.progress import Progress
from service.application.records import DeliverySelector
from service.domain.catalog import Catalog
from service.domain.deliveries import Outcome
from service.domain.override_log import override_differences, rebuilt_overrides
from service.domain.rebuild import ITEM_STATE_COLUMNS, Rebuild
from service.domain.resolution import SubjectState, resolve
from service.domain.unknown_plans import UnknownPlanPolicy, held
from service.domain.usage import Counter, UsageEvent, replayed

PAGE = 2000


@dataclass(frozen=True)
class VerifyReport:
    subjects_checked: int
    differences: list[tuple[str, str]]


class VerifyState:
    def __init__(
        self,
        operations: Operations,
        catalog: Catalog,
        clock: Clock,
        unknown_plan: UnknownPlanPolicy = UnknownPlanPolicy.DEFAULT,
    ) -> None:
        self._operations = operations
        self._catalog = catalog
        self._clock = clock
        self._unknown_plan = unknown_plan

    async def __call__(self) -> AsyncIterator[Progress[Any] | VerifyReport]:
        """Progress while reading the log, then the report."""
        rebuild = Rebuild()
        async with self._operations.snapshot() as snapshot:
            for subject, grant in await snapshot.grants():
                rebuild.add_grant(subject, grant)
            everything = DeliverySelector()
            total = await snapshot.count_deliveries(everything)
            done = 0
            after = ""
            while page := await snapshot.deliveries_page(everything, after, PAGE):
                after = page[-1].event_id
                for delivery in page:
                    event = read_stored(delivery)
                    # Held back by ENTITLEMENTS_UNKNOWN_PLAN=keep, as the store did.
                    if delivery.outcome == Outcome.IGNORED and held(
                        event, self._catalog, self._unknown_plan
                    ):
                        continue
                    rebuild.apply(event)
                done += len(page)
                yield Progress(done, max(total, done))
            report = await self._compare(snapshot, rebuild)
            usage = await _usage_differences(snapshot)
            overrides = override_differences(
                await snapshot.override_rows(), rebuilt_overrides(await snapshot.override_events())
            )
            yield VerifyReport(report.subjects_checked, report.differences + usage + overrides)

    async def _compare(self, live: Snapshot, rebuilt: Rebuild) -> VerifyReport:
        now = self._clock.now_ms()
        live_items, live_subjects = await live.verification_rows()
        new_items, new_subjects = rebuilt.item_rows(), rebuilt.subject_rows()
        differences: list[tuple[str, str]] = []
        subject_at = ITEM_STATE_COLUMNS.index("subject")
        for item_id in sorted(live_items.keys() | new_items.keys()):
            old, new = live_items.get(item_id), new_items.get(item_id)
            if old == new:
                continue
            subject = str((old or new or ("",) * 2)[subject_at])
            differences.append((subject, f"item {item_id}: {_item_diff(old, new)}"))
        subjects = sorted(live_subjects.keys() | new_subjects.keys())
        for subject in subjects:
            if live_subjects.get(subject) != new_subjects.get(subject):
                differences.append(
                    (
                        subject,
                        f"deleted_at_ms: live {live_subjects.get(subject)}, "
                        f"rebuilt {new_subjects.get(subject)}",
                    )
                )
        live_states = await live.load_states(subjects)
        new_states = rebuilt.states()
        for subject in subjects:
            old_plan = resolve(live_states[subject], self._catalog, now).plan.name
            rebuilt_state = new_states.get(subject, SubjectState(subject))
            new_plan = resolve(rebuilt_state, self._catalog, now).plan.name
            if old_plan != new_plan:
                differences.append((subject, f"plan: live {old_plan}, rebuilt {new_plan}"))
        return VerifyReport(len(subjects), differences)


async def _usage_differences(live: Snapshot) -> list[tuple[str, str]]:
    """Each usage counter against what its recorded calls replay to (domain/usage.replayed):
    a call counted twice, or lost, shows here."""
    counters = await live.usage_counters()
    replays: dict[tuple[str, str], Counter | None] = {}
    after: tuple[str, str, int] = ("", "", 0)
    chain: list[UsageEvent] = []
    key: tuple[str, str] | None = None
    while page := await live.usage_events_page(after, PAGE):
        for subject, meter, seq, event in page:
            if (subject, meter) != key:
                if key is not None:
                    replays[key] = replayed(chain)
                key, chain = (subject, meter), []
            chain.append(event)
            after = (subject, meter, seq)
    if key is not None:
        replays[key] = replayed(chain)
    differences = []
    for subject, meter in sorted(counters.keys() | replays.keys()):
        stored, rebuilt = counters.get((subject, meter)), replays.get((subject, meter))
        used = stored.used if stored else 0
        again = rebuilt.used if rebuilt else 0
        if used != again:
            differences.append((subject, f"usage of {meter}: live {used}, rebuilt {again}"))
    return differences


def _item_diff(old: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> str:
    if old is None:
        return "missing from the live state"
    if new is None:
        return "in the live state but no stored delivery produces it"
    parts = [
        f"{name} live {a!r}, rebuilt {b!r}"
        for name, a, b in zip(ITEM_STATE_COLUMNS, old, new, strict=True)
        if a != b
    ]
    return "; ".join(parts)
