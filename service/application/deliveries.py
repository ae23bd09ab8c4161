"""Use cases: apply a delivery, replay a stored one.

A delivery is stored under its event id in the same unit of work as the state change it
causes, so a retry is a DUPLICATE; its subject is locked first, so one subject's deliveries
serialise. Whatever makes applying fail (a value the database refuses, a bug), the delivery
is still stored, UNPARSEABLE, for a replay after a fix; only an unreachable database is an
error the sender must retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from service.application.ports import (
    ChangePublisher,
    Clock,
    NoOperatorEvents,
    OperatorEvents,
    StoreUnavailable,
    Transactions,
    UnitOfWork,
)
from service.application.records import ReplayResult, StoredDelivery
from service.domain.bounds import storable_text
from service.domain.catalog import Catalog
from service.domain.deliveries import (
    ApplyResult,
    Delivery,
    ItemOwnedElsewhere,
    Outcome,
)
from service.domain.events import EventKind, NormalizedEvent
from service.domain.resolution import resolve
from service.domain.subject import Step
from service.domain.unknown_plans import (
    UnknownPlanNote,
    UnknownPlanPolicy,
    held,
    unknown_plan_notes,
)

log = logging.getLogger(__name__)

# Events that are about one subject: their subject's row is locked while they apply.
SUBJECT_KINDS = frozenset(
    {EventKind.ITEMS, EventKind.SUBJECT_CREATED, EventKind.SUBJECT_DELETED, EventKind.RECORD_ONLY}
)


def subject_to_lock(event: NormalizedEvent) -> str | None:
    """The subject whose row a delivery locks while it applies (None: it locks none)."""
    return event.subject if event.kind in SUBJECT_KINDS else None


def announce(changes: ChangePublisher, result: ApplyResult) -> None:
    """Tell this replica's cache and Watch streams of a committed change (read-your-writes)."""
    if result.committed and result.subject:
        changes.on_change(result.version, result.subject)


def read_stored(stored: StoredDelivery) -> NormalizedEvent:
    """A stored delivery as the current parser reads it."""
    return stored.as_delivery().normalize()


class DeliveryRules:
    """Applying one normalised event to its subject inside a unit of work: the outcome policy,
    the notes, and which changes are visible. Shared by first deliveries and replays."""

    def __init__(
        self,
        catalog: Catalog,
        clock: Clock,
        unknown_plan: UnknownPlanPolicy = UnknownPlanPolicy.DEFAULT,
    ) -> None:
        self.catalog = catalog
        self.clock = clock
        self.unknown_plan = unknown_plan

    def notes_for(self, event: NormalizedEvent, held_back: bool = False) -> list[str]:
        notes = list(event.notes)
        if event.error:
            notes.append(event.error)
        notes += unknown_plan_notes(event, self.catalog, held_back)
        return notes

    async def apply_stored(
        self,
        uow: UnitOfWork,
        event_id: str,
        event: NormalizedEvent,
        previous_outcome: str | None = None,
    ) -> ApplyResult:
        """Apply a delivery whose row exists (and whose subject is locked) and record the
        outcome. A replay that finds its effect already stored keeps the APPLIED outcome."""
        # A delivery already APPLIED is not held back on replay: its effect is stored.
        held_back = previous_outcome != Outcome.APPLIED and held(
            event, self.catalog, self.unknown_plan
        )
        notes = self.notes_for(event, held_back)
        if event.kind is EventKind.UNPARSEABLE:
            result = ApplyResult(Outcome.UNPARSEABLE, event.subject, None, None, 0)
        elif event.kind is EventKind.IGNORED:
            # Linked to the subject it is about, so that subject's deletion scrubs it too.
            if event.subject is not None and await uow.subjects.is_deleted(event.subject):
                await uow.deliveries.scrub(event_id)
            result = ApplyResult(Outcome.IGNORED, event.subject, None, None, 0)
        elif event.subject is None:
            result = ApplyResult(Outcome.APPLIED, None, None, None, 0)
        elif held_back:  # ENTITLEMENTS_UNKNOWN_PLAN=keep: stored, linked, not applied
            result = ApplyResult(Outcome.IGNORED, event.subject, None, None, 0)
        else:
            result = await self._apply_to_subject(uow, event_id, event, event.subject, notes)
        if previous_outcome == Outcome.APPLIED and result.outcome is Outcome.STALE:
            result = replace(result, outcome=Outcome.APPLIED)
        if not result.committed:
            await uow.deliveries.finish(event_id, result.outcome, notes, result.subject)
        return replace(result, notes=tuple(notes))

    async def duplicate(self, uow: UnitOfWork, event_id: str) -> ApplyResult:
        subject = await uow.deliveries.subject_of(event_id)
        if subject is None:
            return ApplyResult(Outcome.DUPLICATE, None, None, None, 0)
        state = (await uow.subjects.states([subject]))[subject]
        ent = resolve(state, self.catalog, self.clock.now_ms())
        return ApplyResult(Outcome.DUPLICATE, subject, ent.plan.name, ent.plan.name, state.version)

    async def _apply_to_subject(
        self, uow: UnitOfWork, event_id: str, event: NormalizedEvent, subject: str, notes: list[str]
    ) -> ApplyResult:
        """The subject aggregate decides, the repository writes what it decided (its guard is
        the backstop). The subject is locked: this read sees every earlier change."""
        aggregate = await uow.subjects.load(subject)
        now = self.clock.now_ms()
        before = aggregate.entitlements(self.catalog, now)
        if aggregate.deleted_at_ms is not None or event.kind is EventKind.SUBJECT_DELETED:
            # A deleted subject's stored payloads keep no personal data (late arrivals too).
            await uow.deliveries.scrub_subject(subject)
        steps: list[Step] = []
        deleted, at_ms = False, event.event_ms
        for update in event.items if event.kind is EventKind.ITEMS else ():
            step = aggregate.apply(update, event_id)  # stored even if older than a deletion
            if step.fresh and not await uow.subjects.put_item(
                subject, step.item, update.order_key, update.is_default, event_id
            ):
                step = aggregate.refused(step)
            if step.observed:
                await uow.subjects.observe(subject, step.item)
            steps.append(step)
        if event.kind in (EventKind.SUBJECT_DELETED, EventKind.SUBJECT_CREATED):
            assert at_ms is not None
            if event.kind is EventKind.SUBJECT_CREATED:
                await uow.subjects.note_created(subject, at_ms)
            elif aggregate.mark_deleted(at_ms):
                deleted = await uow.subjects.mark_deleted(subject, at_ms)
        after = aggregate.entitlements(self.catalog, now)
        if not (deleted or aggregate.changed_by(steps, before, after)):
            stale = event.kind in (EventKind.ITEMS, EventKind.SUBJECT_DELETED)
            outcome, plan = Outcome.STALE if stale else Outcome.APPLIED, before.plan.name
            return ApplyResult(outcome, subject, plan, plan, aggregate.version)
        version = await uow.subjects.commit_change(
            subject, after.plan.name, before.plan.name, event_id, event.type, notes
        )
        return ApplyResult(
            Outcome.APPLIED, subject, after.plan.name, before.plan.name, version, committed=True
        )


class ApplyDelivery:
    """Store a verified delivery exactly once and apply it; returns after commit."""

    def __init__(
        self,
        transactions: Transactions,
        rules: DeliveryRules,
        changes: ChangePublisher,
        parse: Callable[[Delivery], NormalizedEvent] = Delivery.normalize,
        events: OperatorEvents | None = None,
    ) -> None:
        self._tx = transactions
        self._rules = rules
        self._changes = changes
        self._parse = parse
        self._events = events or NoOperatorEvents()

    async def __call__(self, delivery: Delivery) -> ApplyResult:
        event = self._parse(delivery)

        async def apply(uow: UnitOfWork) -> ApplyResult:
            locks = subject_to_lock(event) is not None
            if not await uow.deliveries.add(delivery, event, locks):
                return await self._rules.duplicate(uow, delivery.event_id)
            return await self._rules.apply_stored(uow, delivery.event_id, event)

        try:
            result = await self._tx.run(apply)
        except StoreUnavailable:
            raise
        except ItemOwnedElsewhere as exc:
            result = await self._record_only(
                delivery, event, Outcome.IGNORED, [*event.notes, str(exc)]
            )
        except Exception as exc:  # broad on purpose: a verified delivery is always stored
            log.exception(
                "event %s (%s) could not be applied; stored as UNPARSEABLE",
                delivery.event_id,
                storable_text(event.type, 100),
            )
            note = f"could not be applied ({type(exc).__name__}); kept for replay"
            result = await self._record_only(
                delivery, event, Outcome.UNPARSEABLE, [*event.notes, note]
            )
        announce(self._changes, result)
        _log_result(delivery, event, result, self._events)
        return result

    async def _record_only(
        self, delivery: Delivery, event: NormalizedEvent, outcome: Outcome, notes: list[str]
    ) -> ApplyResult:
        """Store a delivery with an outcome and no effect (its own unit of work)."""

        async def record(uow: UnitOfWork) -> ApplyResult:
            if not await uow.deliveries.record(delivery, event, outcome, notes):
                return await self._rules.duplicate(uow, delivery.event_id)
            return ApplyResult(outcome, event.subject, None, None, 0, tuple(notes))

        try:
            return await self._tx.run(record)
        except StoreUnavailable:
            raise
        except Exception as exc:  # not even the raw delivery could be stored: let Svix retry
            log.exception("event %s could not be recorded", delivery.event_id)
            raise StoreUnavailable(f"could not record the delivery ({type(exc).__name__})") from exc


def _log_result(
    delivery: Delivery, event: NormalizedEvent, result: ApplyResult, events: OperatorEvents
) -> None:
    events.delivery_answered(result.outcome)
    for note in result.notes:
        if isinstance(note, UnknownPlanNote):
            events.unknown_plan()
            log.warning("event %s for %s: %s", delivery.event_id, result.subject, note)
    if result.outcome is Outcome.UNPARSEABLE:
        log.warning(
            "event %s (%s) stored as UNPARSEABLE: %s",
            delivery.event_id,
            storable_text(event.type, 100),
            event.error,
        )
    if result.plan is not None and result.plan != result.previous_plan:
        log.info(
            "plan of %s: %s -> %s (event %s, %s)",
            result.subject,
            result.previous_plan,
            result.plan,
            delivery.event_id,
            storable_text(event.type, 100),
        )


class ReplayDelivery:
    """Apply one stored delivery again as the current parser reads it.

    Its row is locked first, so concurrent replays of it serialise, and the ordering guard makes
    a second replay change nothing: exactly once. A parser that now fails on what it once read
    changes nothing (a regression must not erase state)."""

    def __init__(
        self,
        transactions: Transactions,
        rules: DeliveryRules,
        changes: ChangePublisher,
        parse: Callable[[StoredDelivery], NormalizedEvent] = read_stored,
    ) -> None:
        self._tx = transactions
        self._rules = rules
        self._changes = changes
        self._parse = parse

    async def __call__(self, event_id: str) -> ReplayResult | None:
        """None when the delivery is gone."""

        async def replay(uow: UnitOfWork) -> ReplayResult | None:
            stored = await uow.deliveries.get(event_id, for_update=True)
            if stored is None:
                return None
            event = self._parse(stored)
            if event.kind is EventKind.UNPARSEABLE and stored.outcome != Outcome.UNPARSEABLE:
                kept = ApplyResult(
                    Outcome(stored.outcome), None, None, None, 0, (event.error or "",)
                )
                return ReplayResult(stored, event, kept)
            if (subject := subject_to_lock(event)) is not None:
                await uow.subjects.lock(subject)
            result = await self._rules.apply_stored(uow, event_id, event, stored.outcome)
            await uow.deliveries.set_event_ms(event_id, event.event_ms)
            return ReplayResult(stored, event, result)

        try:
            replayed = await self._tx.run(replay)
        except StoreUnavailable:
            raise
        except Exception as exc:  # broad on purpose: a replay of one delivery never stops a run
            # Applying failed again (rolled back): the delivery keeps its stored outcome, except
            # that one moving an item to another subject is now known to be IGNORED.
            owned_elsewhere = isinstance(exc, ItemOwnedElsewhere)
            if not owned_elsewhere:
                log.exception("replay of %s could not apply it; kept as it was", event_id)
            note = str(exc) if owned_elsewhere else f"could not be applied ({type(exc).__name__})"
            replayed = await self._keep(
                event_id, note, Outcome.IGNORED if owned_elsewhere else None
            )
        if replayed is not None:
            announce(self._changes, replayed.result)
            _log_replay(replayed)
        return replayed

    async def _keep(self, event_id: str, note: str, outcome: Outcome | None) -> ReplayResult | None:
        async def keep(uow: UnitOfWork) -> ReplayResult | None:
            stored = await uow.deliveries.get(event_id)
            if stored is None:
                return None
            if outcome is not None:
                await uow.deliveries.mark(event_id, outcome, note)
            kept = ApplyResult(outcome or Outcome(stored.outcome), None, None, None, 0, (note,))
            return ReplayResult(stored, self._parse(stored), kept)

        return await self._tx.run(keep)


def _log_replay(r: ReplayResult) -> None:
    if r.changed or r.delivery.outcome != r.result.outcome:
        log.info(
            "replayed %s (%s): %s -> %s%s",
            r.delivery.event_id,
            storable_text(r.delivery.type, 100),
            r.delivery.outcome,
            r.result.outcome,
            f", plan of {r.result.subject}: {r.result.previous_plan} -> {r.result.plan}"
            if r.changed
            else "",
        )
