"""In-memory implementations of the application layer's ports, for unit tests of the use cases
(milliseconds, no PostgreSQL). They keep the contracts the PostgreSQL adapters keep: a unit of
work commits all or nothing, one version sequence for every change, and the item ordering,
ownership, deletion and override rules — held once, by the domain's subject aggregate
(subject.py) — as the repository contract suite (tests/integration/contract) checks on both
stores."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

from service.adapters.postgres.deliveries import MAX_STORED_TEXT
from service.application.ports import UnitOfWork
from service.application.records import DeliverySelector, StoredDelivery
from service.domain.bounds import storable_text
from service.domain.deliveries import Delivery, Outcome
from service.domain.events import NormalizedEvent
from service.domain.privacy import scrub_payload
from service.domain.resolution import Grant, ItemState, Override, SubjectState
from service.domain.subject import Subject, Subjects
from service.domain.usage import Counter
from tests.support.fake_usage import FakeUsage, UsageData

T = TypeVar("T")


class FakeClock:
    def __init__(self, now_ms: int = 1_800_000_000_000) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class NoChanges:
    """A ChangePublisher nobody listens to."""

    def on_change(self, version: int, subject: str) -> None:
        pass


@dataclass
class RecordedChanges:
    """A ChangePublisher that remembers what it was told."""

    changes: list[tuple[int, str]] = field(default_factory=list)

    def on_change(self, version: int, subject: str) -> None:
        self.changes.append((version, subject))


@dataclass
class StoredRow:
    delivery: Delivery
    type: str
    subject: str | None
    outcome: Outcome
    notes: list[str]
    event_ms: int | None
    scrubbed: bool = False


@dataclass
class StoredGrant:
    subject: str
    grant: Grant
    reason: str
    revoked_at_ms: int | None = None


@dataclass
class Data:
    deliveries: dict[str, StoredRow] = field(default_factory=dict)
    # Items, deletions and overrides not removed: the rules, held by the aggregates.
    subjects: Subjects = field(default_factory=Subjects)
    versions: dict[str, int] = field(default_factory=dict)  # a subject's row: locked once
    created: dict[str, int] = field(default_factory=dict)
    grants: dict[str, StoredGrant] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)  # every override's subject
    usage: UsageData = field(default_factory=lambda: UsageData())
    plan_changes: list[tuple[str, str, str, int, str]] = field(default_factory=list)
    change_log: list[tuple[int, str]] = field(default_factory=list)
    sequence: int = 0


class UnknownSubject(LookupError):
    """A row written for a subject that has none (PostgreSQL: a foreign key violation): the
    repositories expect the subject locked (created) first."""


def require_subject(data: Data, subject: str) -> None:
    if subject not in data.versions:
        raise UnknownSubject(subject)


class FakeDeliveries:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def add(self, delivery: Delivery, event: NormalizedEvent, lock_subject: bool) -> bool:
        if not self._insert(delivery, event, Outcome.PENDING, ()):
            return False
        if lock_subject and event.subject is not None:
            self._data.versions.setdefault(event.subject, 0)
        return True

    async def record(
        self, delivery: Delivery, event: NormalizedEvent, outcome: Outcome, notes: Sequence[str]
    ) -> bool:
        kind = storable_text(delivery.type or event.type, MAX_STORED_TEXT)
        bounded = [storable_text(n, MAX_STORED_TEXT) for n in notes]
        return self._insert(delivery, event, outcome, bounded, kind)

    def _insert(
        self,
        delivery: Delivery,
        event: NormalizedEvent,
        outcome: Outcome,
        notes: Sequence[str],
        kind: str | None = None,
    ) -> bool:
        """Store the delivery under its event id; False when that id is already stored."""
        if delivery.event_id in self._data.deliveries:
            return False
        self._data.deliveries[delivery.event_id] = StoredRow(
            delivery,
            kind or delivery.type or event.type,
            event.subject,
            outcome,
            list(notes),
            event.event_ms,
        )
        return True

    async def finish(
        self, event_id: str, outcome: Outcome, notes: Sequence[str], subject: str | None
    ) -> None:
        row = self._data.deliveries[event_id]
        row.outcome, row.notes, row.subject = outcome, list(notes), subject

    async def subject_of(self, event_id: str) -> str | None:
        row = self._data.deliveries.get(event_id)
        return None if row is None else row.subject

    async def get(self, event_id: str, *, for_update: bool = False) -> StoredDelivery | None:
        row = self._data.deliveries.get(event_id)
        if row is None:
            return None
        d = row.delivery
        return StoredDelivery(
            d.event_id,
            row.type,
            d.payload,
            row.outcome.value,
            datetime.fromtimestamp(d.received_ms / 1000, UTC),
            d.signed_at_ms,
            d.source,
        )

    async def set_event_ms(self, event_id: str, event_ms: int | None) -> None:
        self._data.deliveries[event_id].event_ms = event_ms

    async def mark(self, event_id: str, outcome: Outcome, note: str) -> None:
        row = self._data.deliveries[event_id]
        row.outcome = outcome
        row.notes.append(storable_text(note, MAX_STORED_TEXT))

    async def scrub(self, event_id: str) -> None:
        self._scrub(self._data.deliveries[event_id])

    async def scrub_subject(self, subject: str) -> None:
        for row in self._data.deliveries.values():
            if row.subject == subject and not row.scrubbed:
                self._scrub(row)

    @staticmethod
    def _scrub(row: StoredRow) -> None:
        row.delivery = replace(row.delivery, payload=scrub_payload(row.delivery.payload))
        row.scrubbed = True


class FakeSubjects:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def lock(self, subject: str) -> None:
        self._data.versions.setdefault(subject, 0)

    async def states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        return {s: self._data_state(s) for s in subjects}

    async def load(self, subject: str) -> Subject:
        found = self._data.subjects.get(subject)
        aggregate = copy.deepcopy(found) if found else Subject(subject)
        state = self._data_state(subject)
        aggregate.grants, aggregate.version = state.grants, state.version
        return aggregate

    def _data_state(self, subject: str) -> SubjectState:
        data = self._data
        aggregate = data.subjects.get(subject)
        return SubjectState(
            subject=subject,
            items=aggregate.item_states() if aggregate is not None else (),
            grants=tuple(
                g.grant
                for g in data.grants.values()
                if g.subject == subject and g.revoked_at_ms is None
            ),
            deleted_at_ms=aggregate.deleted_at_ms if aggregate is not None else None,
            version=data.versions.get(subject, 0),
            overrides=tuple(aggregate.overrides.values()) if aggregate is not None else (),
        )

    async def is_deleted(self, subject: str) -> bool:
        aggregate = self._data.subjects.get(subject)
        return aggregate is not None and aggregate.deleted_at_ms is not None

    async def put_item(
        self,
        subject: str,
        item: ItemState,
        order: tuple[int, int, str],
        is_default: bool,
        event_id: str,
    ) -> bool:
        require_subject(self._data, subject)
        return self._data.subjects.put_item(subject, item, order, is_default, event_id)

    async def observe(self, subject: str, item: ItemState) -> None:
        self._data.subjects.observe(subject, item)

    async def mark_deleted(self, subject: str, at_ms: int) -> bool:
        if subject not in self._data.versions:
            return False  # no subject row: nothing to mark
        return self._data.subjects.add(subject).mark_deleted(at_ms)

    async def note_created(self, subject: str, at_ms: int) -> None:
        self._data.created[subject] = min(self._data.created.get(subject, at_ms), at_ms)

    async def commit_change(
        self,
        subject: str,
        plan: str,
        previous_plan: str,
        cause_id: str,
        cause_type: str,
        notes: Sequence[str],
    ) -> int:
        data = self._data
        data.sequence += 1
        version = data.sequence
        data.versions[subject] = version
        data.change_log.append((version, subject))
        if plan != previous_plan:
            data.plan_changes.append((subject, previous_plan, plan, version, cause_id))
        row = data.deliveries.get(cause_id)
        if row is not None:
            row.outcome, row.notes, row.subject = Outcome.APPLIED, list(notes), subject
        return version


class FakeGrants:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def add(self, grant_id: str, subject: str, grant: Grant, reason: str) -> None:
        require_subject(self._data, subject)
        self._data.grants[grant_id] = StoredGrant(subject, grant, reason)

    async def active_subject(self, grant_id: str) -> str | None:
        stored = self._data.grants.get(grant_id)
        return stored.subject if stored is not None and stored.revoked_at_ms is None else None

    async def revoke(self, grant_id: str, at_ms: int, reason: str) -> bool:
        stored = self._data.grants.get(grant_id)
        if stored is None or stored.revoked_at_ms is not None:
            return False
        stored.revoked_at_ms = at_ms
        return True


class FakeOverrides:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def add(self, subject: str, override: Override) -> None:
        require_subject(self._data, subject)
        self._data.subjects.add(subject).set_override(override, override.created_at_ms)
        self._data.overrides[override.override_id] = subject

    def _holder(self, override_id: str) -> Subject | None:
        """The aggregate holding the override (None: never set, or removed)."""
        aggregate = self._data.subjects.get(self._data.overrides.get(override_id, ""))
        return aggregate if aggregate is not None and override_id in aggregate.overrides else None

    async def active_subject(self, override_id: str) -> str | None:
        aggregate = self._holder(override_id)
        return aggregate.subject if aggregate is not None else None

    async def remove(self, override_id: str, at_ms: int, reason: str) -> bool:
        aggregate = self._holder(override_id)
        return aggregate is not None and aggregate.remove_override(override_id) is not None


class FakeUnitOfWork:
    def __init__(self, data: Data) -> None:
        self.deliveries = FakeDeliveries(data)
        self.subjects = FakeSubjects(data)
        self.grants = FakeGrants(data)
        self.overrides = FakeOverrides(data)
        self.usage = FakeUsage(data.usage)


class InMemoryStore:
    """Transactions, StateReader and DeliveryLog in memory. A unit of work runs on a copy that
    replaces the data only when the work returns: a raise leaves nothing behind, as a rolled
    back transaction. `fail_with` makes the next unit of work raise (a database fault)."""

    def __init__(self) -> None:
        self.data = Data()
        self.units = 0
        self.fail_with: BaseException | None = None

    async def counters(self, subject: str, now_ms: int) -> dict[str, Counter]:
        return await FakeUsage(self.data.usage).counters(subject, now_ms)

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        self.units += 1
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        draft = copy.deepcopy(self.data)
        result = await work(FakeUnitOfWork(draft))
        self.data = draft
        return result

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        return await FakeSubjects(self.data).states(list(dict.fromkeys(subjects)))

    def _selected(self, selector: DeliverySelector) -> list[str]:
        rows = self.data.deliveries
        return sorted(
            event_id
            for event_id, row in rows.items()
            if (selector.subject is None or row.subject == selector.subject)
            and (not selector.unparseable or row.outcome is Outcome.UNPARSEABLE)
        )

    async def count_deliveries(self, selector: DeliverySelector) -> int:
        return len(self._selected(selector))

    async def deliveries_page(
        self, selector: DeliverySelector, after: str, limit: int
    ) -> list[StoredDelivery]:
        ids = [i for i in self._selected(selector) if i > after][:limit]
        reader = FakeDeliveries(self.data)
        return [d for i in ids if (d := await reader.get(i)) is not None]

    def outcome(self, event_id: str) -> Outcome:
        return self.data.deliveries[event_id].outcome
