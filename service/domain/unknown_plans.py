"""What a delivery naming a Clerk plan the catalog lacks does (ENTITLEMENTS_UNKNOWN_PLAN).

`default` (the reference app's TC-09): the item resolves to the default plan, with a note on the
delivery and in the subject's history, and a counter. `keep`: a delivery that would make such a
plan the subject's (an active, past-due or canceled item) is stored IGNORED with a note and not
applied, so the subject keeps what it had (a customer moved to a renamed paid plan is not
dropped to free) until the catalog maps the slug and the delivery is replayed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from service.domain.catalog import Catalog
from service.domain.events import EventKind, ItemStatus, ItemUpdate, NormalizedEvent

# Statuses that give the subject the item's plan (resolution.py's candidates).
ENTITLING = frozenset({ItemStatus.ACTIVE, ItemStatus.PAST_DUE, ItemStatus.CANCELED})
NOTE_PREFIX = "unknown plan slug"


class UnknownPlanNote(str):
    """A delivery's note that it named a plan the catalog lacks: stored as its text, and told
    apart from other notes by its type (counted: entitlements_unknown_plan_deliveries)."""

    __slots__ = ()


class UnknownPlanPolicy(StrEnum):
    DEFAULT = "default"
    KEEP = "keep"


def unknown_items(event: NormalizedEvent, catalog: Catalog) -> list[ItemUpdate]:
    return [i for i in event.items if not catalog.match(i.plan_slug, i.plan_id).known]


def held(event: NormalizedEvent, catalog: Catalog, policy: UnknownPlanPolicy) -> bool:
    """Whether `keep` holds this delivery back: it would give the subject an unknown plan."""
    return (
        policy is UnknownPlanPolicy.KEEP
        and event.kind is EventKind.ITEMS
        and any(i.status in ENTITLING for i in unknown_items(event, catalog))
    )


def unknown_plan_notes(event: NormalizedEvent, catalog: Catalog, held_back: bool) -> list[str]:
    """One note per item naming an unknown plan: what was done about it."""
    default = catalog.default_plan.name
    notes: list[str] = []
    for item in unknown_items(event, catalog):
        named = f"{NOTE_PREFIX} {item.plan_slug!r} (id {item.plan_id!r})"
        if held_back:
            notes.append(
                UnknownPlanNote(
                    f"{named}: not applied, the subject keeps its plan "
                    "(ENTITLEMENTS_UNKNOWN_PLAN=keep); map it in the catalog, then "
                    f"`entitlements replay --subject {event.subject}`"
                )
            )
        else:
            notes.append(UnknownPlanNote(f"{named} mapped to default plan {default!r}"))
    return notes


# ---- reading the notes back (`entitlements status`) ----------------------------------------

# A note as unknown_plan_notes writes it: the prefix, then the slug and the id as Python reprs.
_REPR = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|None"""
_NOTE = re.compile(rf"^{NOTE_PREFIX} (?P<slug>{_REPR}) \(id (?P<id>{_REPR})\)")


@dataclass(frozen=True)
class NotedDelivery:
    """A stored delivery with at least one unknown-plan note."""

    event_id: str
    subject: str | None
    recorded_at_ms: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Sighting:
    """One unknown (slug, plan id) and the stored deliveries that named it."""

    slug: str
    plan_id: str
    deliveries: int
    first_seen_ms: int
    last_seen_ms: int
    example_subject: str
    example_event_id: str
    note: str


def _literal(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return "" if value is None else str(value)


def parse_note(note: str) -> tuple[str, str] | None:
    """(slug, plan id) of an unknown-plan note; None for any other note. A note cut short
    when it was stored still names its slug as far as it goes."""
    if not note.startswith(NOTE_PREFIX):
        return None
    match = _NOTE.match(note)
    if match is None:
        return note[len(NOTE_PREFIX) :].strip(), ""
    return _literal(match["slug"]), _literal(match["id"])


def sightings(deliveries: Iterable[NotedDelivery]) -> list[Sighting]:
    """Unknown plans by (slug, plan id), most deliveries first: how many deliveries named
    each, when first and last, and the latest one's subject, event id and note."""
    found: dict[tuple[str, str], Sighting] = {}
    for d in deliveries:
        for key, note in {k: n for n in d.notes if (k := parse_note(n)) is not None}.items():
            seen = found.get(key)
            if seen is None:
                found[key] = Sighting(
                    *key, 1, d.recorded_at_ms, d.recorded_at_ms, d.subject or "", d.event_id, note
                )
                continue
            latest = d.recorded_at_ms >= seen.last_seen_ms
            found[key] = Sighting(
                *key,
                seen.deliveries + 1,
                min(seen.first_seen_ms, d.recorded_at_ms),
                max(seen.last_seen_ms, d.recorded_at_ms),
                (d.subject or "") if latest else seen.example_subject,
                d.event_id if latest else seen.example_event_id,
                note if latest else seen.note,
            )
    return sorted(found.values(), key=lambda s: (-s.deliveries, -s.last_seen_ms, s.slug))
