"""When did an item become past due? The anchor of its grace period (SPEC §9).

Clerk's item objects often carry no `past_due_at`, and `subscription.updated` re-lists items that
are already past due. Grace must run from when the item *first* became past due in its current
episode, and the answer must not depend on the order deliveries arrive in (Svix does not keep
order). So every event that sees the item is an observation:

* a past-due observation contributes a mark `(event time, anchor)`, the anchor being the
  explicit `past_due_at` it carried (item's, else the enclosing subscription's), else its event
  time;
* any other status ends the episodes before it: marks it orders after are dropped (the order
  is (event time, lifecycle rank), as for the items themselves: at equal times `active` comes
  before `past_due`, `canceled` and `ended` after it).

The anchor is the smallest anchor among the surviving marks. Only a Pareto front of marks is kept
(a mark that is both older and later-anchored than another can never be the answer), so the
stored track is a function of the set of observations, not of their order.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_MARKS = 32
PAST_DUE_RANK = 2  # LIFECYCLE_RANK[ItemStatus.PAST_DUE]

Mark = tuple[int, int]  # (event_ms, anchor_ms)


@dataclass(frozen=True, slots=True)
class PastDueTrack:
    last_ok: tuple[int, int] | None = None  # (event_ms, lifecycle rank) of the newest non-past-due
    marks: tuple[Mark, ...] = ()

    def observe(
        self, event_ms: int, rank: int, past_due: bool, explicit_ms: int | None
    ) -> PastDueTrack:
        """The track after one more observation of the item (in any order)."""
        if past_due:
            if self.last_ok is not None and (event_ms, PAST_DUE_RANK) < self.last_ok:
                return self  # a later non-past-due event already ended that episode
            anchor = explicit_ms if explicit_ms is not None else event_ms
            return PastDueTrack(self.last_ok, _front((*self.marks, (event_ms, anchor))))
        last_ok = (event_ms, rank) if self.last_ok is None else max(self.last_ok, (event_ms, rank))
        kept = tuple(m for m in self.marks if (m[0], PAST_DUE_RANK) > last_ok)
        return PastDueTrack(last_ok, kept)

    @property
    def anchor_ms(self) -> int | None:
        return min((anchor for _, anchor in self.marks), default=None)

    def flat(self) -> list[int]:
        """The marks as one flat list (how PostgreSQL stores them: a bigint[])."""
        return [value for mark in self.marks for value in mark]

    @classmethod
    def from_flat(
        cls, last_ok_ms: int | None, last_ok_rank: int | None, flat: list[int] | tuple[int, ...]
    ) -> PastDueTrack:
        pairs = tuple((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat) - 1, 2))
        last_ok = None if last_ok_ms is None else (last_ok_ms, last_ok_rank or 0)
        return cls(last_ok, _front(pairs))


def _front(marks: tuple[Mark, ...]) -> tuple[Mark, ...]:
    """Marks not dominated by a later-or-equal one with a smaller-or-equal anchor, oldest first."""
    kept: list[Mark] = []
    best: int | None = None
    for event_ms, anchor in sorted(set(marks), key=lambda m: (-m[0], m[1])):
        if best is None or anchor < best:
            kept.append((event_ms, anchor))
            best = anchor
    kept.reverse()
    return tuple(kept[-MAX_MARKS:])
