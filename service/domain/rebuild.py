"""Rebuilding plan state from the stored log, in memory, with the current rules (for `verify`).

The same rules the store applies inside its transactions, as plain functions over plain
values: the ordering guard (event time, lifecycle rank, content digest), an item belongs to the
subject that first held it, older events still count as observations (ever active, past-due
episodes), deletions are tombstones that only grow. Being pure, a rebuild of a whole log runs
at parsing speed (no database round trip per delivery), and it cross-checks the SQL path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.domain.events import EventKind, ItemUpdate, NormalizedEvent
from service.domain.resolution import (
    Grant,
    ItemState,
    SubjectState,
    item_after_stale,
    item_after_update,
)

# The columns of a stored item that are state, in the order `verify` compares them.
ITEM_STATE_COLUMNS = (
    "item_id",
    "subject",
    "status",
    "plan_slug",
    "plan_id",
    "period_end_ms",
    "past_due_at_ms",
    "is_default",
    "ever_active",
    "event_ms",
    "lifecycle_rank",
    "digest",
)


@dataclass
class _Item:
    state: ItemState
    subject: str
    is_default: bool
    lifecycle_rank: int
    digest: str

    @property
    def order_key(self) -> tuple[int, int, str]:
        return (self.state.event_ms, self.lifecycle_rank, self.digest)

    def row(self) -> tuple[Any, ...]:
        s = self.state
        return (
            s.item_id,
            self.subject,
            s.status.value,
            s.plan_slug,
            s.plan_id,
            s.period_end_ms,
            s.past_due_at_ms,
            self.is_default,
            s.ever_active,
            s.event_ms,
            self.lifecycle_rank,
            self.digest,
        )


def _storable(update: ItemUpdate) -> bool:
    """Whether PostgreSQL would take the update's text (the store keeps a delivery it refuses
    as UNPARSEABLE, with no effect): no NUL, no lone surrogate."""
    for text in (update.item_id, update.subject, update.plan_slug, update.plan_id):
        if text is None:
            continue
        if "\x00" in text:
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


@dataclass
class Rebuild:
    items: dict[str, _Item] = field(default_factory=dict)
    subjects: set[str] = field(default_factory=set)
    deleted: dict[str, int] = field(default_factory=dict)
    grants: dict[str, list[Grant]] = field(default_factory=dict)

    def apply(self, event: NormalizedEvent) -> None:
        """One stored delivery, as the store would apply it now."""
        subject = event.subject
        if subject is None or event.kind in (EventKind.UNPARSEABLE, EventKind.IGNORED):
            return
        if event.kind is EventKind.ITEMS:
            if not all(_storable(u) for u in event.items) or "\x00" in event.type:
                return
            for update in event.items:
                held = self.items.get(update.item_id)
                if held is not None and held.subject != subject:
                    return  # would move an item to another subject: changes nothing
            self.subjects.add(subject)
            for update in event.items:
                self._apply_item(subject, update)
            return
        self.subjects.add(subject)
        if event.kind is EventKind.SUBJECT_DELETED and event.event_ms is not None:
            self.deleted[subject] = max(self.deleted.get(subject, event.event_ms), event.event_ms)

    def _apply_item(self, subject: str, update: ItemUpdate) -> None:
        held = self.items.get(update.item_id)
        if held is None or update.order_key > held.order_key:
            self.items[update.item_id] = _Item(
                item_after_update(held.state if held else None, update),
                subject,
                update.is_default,
                update.lifecycle_rank,
                update.digest,
            )
        else:
            held.state = item_after_stale(held.state, update)

    def add_grant(self, subject: str, grant: Grant | None) -> None:
        """A stored grant (None: revoked, it only registers the subject)."""
        self.subjects.add(subject)
        if grant is not None:
            self.grants.setdefault(subject, []).append(grant)

    def item_rows(self) -> dict[str, tuple[Any, ...]]:
        return {item_id: item.row() for item_id, item in self.items.items()}

    def subject_rows(self) -> dict[str, int | None]:
        return {subject: self.deleted.get(subject) for subject in self.subjects}

    def states(self) -> dict[str, SubjectState]:
        by_subject: dict[str, list[ItemState]] = {}
        for item in self.items.values():
            by_subject.setdefault(item.subject, []).append(item.state)
        return {
            subject: SubjectState(
                subject,
                tuple(by_subject.get(subject, ())),
                tuple(self.grants.get(subject, ())),
                self.deleted.get(subject),
            )
            for subject in self.subjects
        }
