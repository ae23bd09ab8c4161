"""The oracle: the state each subject must end in, from the same events applied in event-time
order by plain rules (latest event per item wins; a deletion ends what came before it)."""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.catalog import Catalog
from service.domain.events import EventKind, ItemStatus, normalize_event
from service.domain.resolution import ItemState, SubjectState, resolve


@dataclass(frozen=True)
class Expected:
    plan: str
    features: frozenset[str]
    limits: dict[str, tuple[int, bool]]


def expected_states(
    bodies_in_order: list[bytes], catalog: Catalog, now_ms: int
) -> dict[str, Expected]:
    items: dict[str, dict[str, ItemState]] = {}
    deleted: dict[str, int] = {}
    for body in bodies_in_order:
        event = normalize_event(body, "", 0)
        if event.subject is None:
            continue
        per_subject = items.setdefault(event.subject, {})
        if event.kind is EventKind.SUBJECT_DELETED and event.event_ms is not None:
            deleted[event.subject] = max(deleted.get(event.subject, 0), event.event_ms)
        for update in event.items:
            old = per_subject.get(update.item_id)
            past_due_at = update.past_due_at_ms
            if update.status is ItemStatus.PAST_DUE:
                # Grace runs from the first sighting of the episode (SPEC §9): re-listing an
                # item that is already past due keeps the earlier anchor.
                seen = past_due_at if past_due_at is not None else update.event_ms
                if old is not None and old.status is ItemStatus.PAST_DUE:
                    assert old.past_due_at_ms is not None
                    seen = min(seen, old.past_due_at_ms)
                past_due_at = seen
            per_subject[update.item_id] = ItemState(
                update.item_id,
                update.status,
                update.plan_slug,
                update.plan_id,
                update.period_end_ms,
                past_due_at,
                update.event_ms,
                ever_active=(old is not None and old.ever_active)
                or update.status is ItemStatus.ACTIVE,
            )
    out = {}
    for subject, per_subject in items.items():
        state = SubjectState(subject, tuple(per_subject.values()), (), deleted.get(subject))
        ent = resolve(state, catalog, now_ms)
        out[subject] = Expected(
            ent.plan.name,
            ent.features,
            {k: (v.value, v.unlimited) for k, v in ent.limits.items()},
        )
    return out
