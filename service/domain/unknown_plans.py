"""What a delivery naming a Clerk plan the catalog lacks does (ENTITLEMENTS_UNKNOWN_PLAN).

`default` (the reference app's TC-09): the item resolves to the default plan, with a note on the
delivery and in the subject's history, and a counter. `keep`: a delivery that would make such a
plan the subject's (an active, past-due or canceled item) is stored IGNORED with a note and not
applied, so the subject keeps what it had (a customer moved to a renamed paid plan is not
dropped to free) until the catalog maps the slug and the delivery is replayed.
"""

from __future__ import annotations

from enum import StrEnum

from service.domain.catalog import Catalog
from service.domain.events import EventKind, ItemStatus, ItemUpdate, NormalizedEvent

# Statuses that give the subject the item's plan (resolution.py's candidates).
ENTITLING = frozenset({ItemStatus.ACTIVE, ItemStatus.PAST_DUE, ItemStatus.CANCELED})
NOTE_PREFIX = "unknown plan slug"


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
    notes = []
    for item in unknown_items(event, catalog):
        named = f"{NOTE_PREFIX} {item.plan_slug!r} (id {item.plan_id!r})"
        if held_back:
            notes.append(
                f"{named}: not applied, the subject keeps its plan "
                "(ENTITLEMENTS_UNKNOWN_PLAN=keep); map it in the catalog, then "
                f"`entitlements replay --subject {event.subject}`"
            )
        else:
            notes.append(f"{named} mapped to default plan {default!r}")
    return notes
