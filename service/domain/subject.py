"""The subject aggregate: one subject's terms and the rules that decide what changes them
(cosmicpython's `Product.allocate` is the model). It holds the subject's subscription items,
deletion, grants, per-customer overrides and version.

* Ordering: an item changes only for a strictly later (event time, lifecycle rank, digest).
* An older update still counts as an observation (ever active, past-due episodes), so the
  result is the same in any arrival order; `ever_active` only grows.
* A deletion is a tombstone that only moves later.
* Ownership: an item belongs to the subject that first held it (`Subjects`, which knows every
  subject's items, refuses to move one; one subject's aggregate learns it when the store
  refuses a write: `refused`).
* A change (a new version) is a written item resolution sees or an observation that changes
  what a caller sees (`changed_by`).
* Overrides: setting one places it at an instant (its creation time) beside the others; the
  newest of one feature or limit wins in resolution. Removing one ends it only while it is
  held (not removed yet), once (`set_override`, `remove_override`).
* Read-side terms: what the subject may use at an instant (`entitlements`: lifecycle, past-due
  grace, grants, deletion and the overrides in force, by resolution.resolve) and the period a
  metered limit counts in (`usage_period`: usage.period_at with the entitling item's billing
  period). The cached read path resolves cached SubjectStates with the same function.

ApplyDelivery and the override use cases load a subject's aggregate, let it decide and write
what it decided; the in-memory fake of the store and `verify`'s rebuild (deliveries and the
override log) keep their state in these aggregates; PostgreSQL keeps the same rules in its
UPSERT guard and in `removed_at_ms IS NULL`, the backstop under concurrency (the repository
contract suite, tests/integration/contract, checks the fake and PostgreSQL agree).
(Subject ids themselves are checked in subjects.py, what an override may name in
application/overrides.py, against the catalog.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from service.domain.bounds import echo
from service.domain.catalog import Catalog
from service.domain.deliveries import ItemOwnedElsewhere
from service.domain.events import ItemUpdate
from service.domain.resolution import (
    Entitlements,
    Grant,
    ItemState,
    Override,
    SubjectState,
    item_after_stale,
    item_after_update,
    resolve,
)
from service.domain.usage import Period

Order = tuple[int, int, str]  # (event time, lifecycle rank, content digest)


def _visible(ent: Entitlements) -> tuple[str, str, int | None]:
    """What a caller can see of a subject's entitlements (a change to it is a new version)."""
    return (ent.plan.name, ent.status.value, ent.valid_until_ms)


@dataclass
class HeldItem:
    """An item as its subject holds it, with the order of the update that wrote it."""

    state: ItemState
    order: Order
    is_default: bool
    event_id: str = ""


@dataclass(frozen=True)
class Step:
    """What one item update did to its subject, for the store to write: `fresh` (it won the
    ordering: the store writes `item`) or, when it lost, `observed` (it still told something:
    the store keeps `item`'s observations). `previous`: what was held before a fresh write."""

    update: ItemUpdate
    item: ItemState
    fresh: bool
    observed: bool
    previous: HeldItem | None = None


@dataclass
class Subject:
    """One subject's items, deletion time, grants, overrides (not removed, by id) and
    version."""

    subject: str
    items: dict[str, HeldItem] = field(default_factory=dict)
    deleted_at_ms: int | None = None
    grants: tuple[Grant, ...] = ()
    overrides: dict[str, Override] = field(default_factory=dict)
    version: int = 0

    def wins(self, item_id: str, order: Order) -> bool:
        """The ordering guard: an update of order `order` changes the item when the item is
        new here or `order` is strictly after the held one's."""
        held = self.items.get(item_id)
        return held is None or held.order < order

    def put(self, item: ItemState, order: Order, is_default: bool, event_id: str = "") -> bool:
        """Hold `item` if it is new here or `order` is after the held one's; False when
        nothing changed (an older or equal order). The order's time is the item's time."""
        if not self.wins(item.item_id, order):
            return False
        self._hold(item, order, is_default, event_id)
        return True

    def _hold(self, item: ItemState, order: Order, is_default: bool, event_id: str) -> None:
        held = self.items.get(item.item_id)
        ever_active = item.ever_active or (held is not None and held.state.ever_active)
        if (item.ever_active, item.event_ms) != (ever_active, order[0]):
            item = replace(item, ever_active=ever_active, event_ms=order[0])
        self.items[item.item_id] = HeldItem(item, order, is_default, event_id)

    def observe(self, item: ItemState) -> bool:
        """Keep what an older update still tells of a held item (ever active, past-due
        observations); False when the item is not held here."""
        held = self.items.get(item.item_id)
        if held is None:
            return False
        held.state = replace(
            held.state,
            ever_active=item.ever_active,
            past_due=item.past_due,
            past_due_at_ms=item.past_due_at_ms,
        )
        return True

    def apply(self, update: ItemUpdate, event_id: str = "") -> Step:
        """One item update as the store applies it: written when it wins the ordering, else
        an observation (`item_after_stale` changes only what `observe` keeps)."""
        held = self.items.get(update.item_id)
        if held is not None and not held.order < update.order_key:
            return self._stale(held, update)
        new = item_after_update(held.state if held is not None else None, update)
        self._hold(new, update.order_key, update.is_default, event_id)
        return Step(update, self.items[update.item_id].state, True, False, held)

    def refused(self, step: Step) -> Step:
        """The store's guard refused the write `step` decided (the backstop under concurrency):
        an item not held here is another subject's (ItemOwnedElsewhere: nothing changes), a
        held one counts as an older update."""
        item_id = step.update.item_id
        if step.previous is None:
            self.items.pop(item_id, None)
            raise ItemOwnedElsewhere(
                f"item {echo(item_id)} belongs to another subject; the delivery changed nothing"
            )
        self.items[item_id] = step.previous
        return self._stale(step.previous, step.update)

    @staticmethod
    def _stale(held: HeldItem, update: ItemUpdate) -> Step:
        seen = item_after_stale(held.state, update)
        observed, held.state = seen != held.state, seen
        return Step(update, seen, False, observed)

    def changed_by(self, steps: Sequence[Step], before: Entitlements, after: Entitlements) -> bool:
        """Whether an event's item steps are a change (a new version): an item written that
        resolution sees (later than the deletion), or an observation that changes what a caller
        sees (plan, status, valid until)."""
        deleted_at = self.deleted_at_ms
        if any(s.fresh and (deleted_at is None or s.item.event_ms > deleted_at) for s in steps):
            return True
        return any(s.observed for s in steps) and _visible(after) != _visible(before)

    def state(self) -> SubjectState:
        """The subject's stored terms as resolution reads them."""
        return SubjectState(
            self.subject,
            self.item_states(),
            self.grants,
            self.deleted_at_ms,
            self.version,
            tuple(self.overrides.values()),
        )

    def entitlements(self, catalog: Catalog, now_ms: int) -> Entitlements:
        """What the subject may use at `now_ms` (resolution.resolve: lifecycle, past-due
        grace, grants, deletion, the overrides in force)."""
        return resolve(self.state(), catalog, now_ms)

    def usage_period(self, catalog: Catalog, meter: str, now_ms: int) -> Period:
        """The period the metered limit `meter` counts usage in at `now_ms`: its reset
        (usage.period_at) over the billing period of the item that entitles the subject."""
        return self.entitlements(catalog, now_ms).meter_periods[meter]

    def set_override(self, override: Override, at_ms: int) -> Override:
        """Place `override` at `at_ms` (its creation time): the override the store writes.
        Older ones of the same feature or limit stay, shadowed while it is in force
        (resolution: the newest wins)."""
        placed = replace(override, created_at_ms=at_ms)
        self.overrides[placed.override_id] = placed
        return placed

    def remove_override(self, override_id: str) -> Override | None:
        """End an override this subject holds; None when it holds none of that id (never set
        here, or removed already): nothing changes."""
        return self.overrides.pop(override_id, None)

    def mark_deleted(self, at_ms: int) -> bool:
        """Record the deletion unless a later (or the same) one is recorded; True when it
        changed."""
        if self.deleted_at_ms is not None and self.deleted_at_ms >= at_ms:
            return False
        self.deleted_at_ms = at_ms
        return True

    def item_states(self) -> tuple[ItemState, ...]:
        return tuple(held.state for held in self.items.values())


@dataclass
class Subjects:
    """Every known subject's aggregate, and which subject holds each item (ownership)."""

    by_subject: dict[str, Subject] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def get(self, subject: str) -> Subject | None:
        return self.by_subject.get(subject)

    def add(self, subject: str) -> Subject:
        """The subject's aggregate, made empty when it is new."""
        found = self.by_subject.get(subject)
        if found is None:
            found = self.by_subject[subject] = Subject(subject)
        return found

    def owner(self, item_id: str) -> str | None:
        return self.owners.get(item_id)

    def put_item(
        self, subject: str, item: ItemState, order: Order, is_default: bool, event_id: str = ""
    ) -> bool:
        """`Subject.put`, refused (False) for an item another subject holds."""
        if self.owners.get(item.item_id, subject) != subject:
            return False
        if not self.add(subject).put(item, order, is_default, event_id):
            return False
        self.owners[item.item_id] = subject
        return True

    def observe(self, subject: str, item: ItemState) -> None:
        """`Subject.observe`; nothing for an item the subject does not hold."""
        found = self.by_subject.get(subject)
        if found is not None:
            found.observe(item)

    def apply(self, subject: str, updates: Sequence[ItemUpdate], event_id: str = "") -> bool:
        """One event's item updates for `subject`, all or none: False (nothing changes) when
        one of its items is another subject's."""
        owners = self.owners
        if any(owners.get(u.item_id, subject) != subject for u in updates):
            return False
        aggregate = self.add(subject)
        for update in updates:
            aggregate.apply(update, event_id)
            owners[update.item_id] = subject
        return True
