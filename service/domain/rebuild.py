"""Rebuilding plan state from the stored log, in memory, with the current rules (for `verify`).

The state is held in subject aggregates (service/domain/subject.py), which own the rule the
store applies inside its transactions: the ordering guard (event time, lifecycle rank, content
digest), an item belongs to the subject that first held it, older events still count as
observations (ever active, past-due episodes), deletions are tombstones that only grow. Being
pure, a rebuild of a whole log runs at parsing speed (no database round trip per delivery),
and it cross-checks the SQL path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.domain.events import EventKind, ItemUpdate, NormalizedEvent
from service.domain.resolution import Grant, SubjectState
from service.domain.subject import HeldItem, Subjects

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


def _row(subject: str, held: HeldItem) -> tuple[Any, ...]:
    """An item as `verify` compares it (ITEM_STATE_COLUMNS)."""
    s = held.state
    _, rank, digest = held.order
    return (
        s.item_id,
        subject,
        s.status.value,
        s.plan_slug,
        s.plan_id,
        s.period_end_ms,
        s.past_due_at_ms,
        held.is_default,
        s.ever_active,
        s.event_ms,
        rank,
        digest,
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
    subjects: Subjects = field(default_factory=Subjects)

    def apply(self, event: NormalizedEvent) -> None:
        """One stored delivery, as the store would apply it now."""
        subject = event.subject
        if subject is None or event.kind in (EventKind.UNPARSEABLE, EventKind.IGNORED):
            return
        if event.kind is EventKind.ITEMS:
            if not all(_storable(u) for u in event.items) or "\x00" in event.type:
                return
            self.subjects.apply(subject, event.items)  # another subject's item: no change
            return
        held = self.subjects.add(subject)
        if event.kind is EventKind.SUBJECT_DELETED and event.event_ms is not None:
            held.mark_deleted(event.event_ms)

    def add_grant(self, subject: str, grant: Grant | None) -> None:
        """A stored grant (None: revoked, it only registers the subject)."""
        aggregate = self.subjects.add(subject)
        if grant is not None:
            aggregate.grants = (*aggregate.grants, grant)

    def item_rows(self) -> dict[str, tuple[Any, ...]]:
        return {
            item_id: _row(subject, held)
            for subject, aggregate in self.subjects.by_subject.items()
            for item_id, held in aggregate.items.items()
        }

    def subject_rows(self) -> dict[str, int | None]:
        return {s: aggregate.deleted_at_ms for s, aggregate in self.subjects.by_subject.items()}

    def states(self) -> dict[str, SubjectState]:
        return {subject: a.state() for subject, a in self.subjects.by_subject.items()}
