"""The ports the use cases run against: a clock, a unit of work with its repositories, reads,
Clerk's API and where committed changes are announced. PostgreSQL and aiohttp implement them
in service/adapters; tests/support/fakes.py implements them in memory for unit tests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from service.application.records import (
    CacheEntry,
    ChangeBatch,
    DeliverySelector,
    HistoryRow,
    StoredDelivery,
)
from service.domain.consumption import Recorded
from service.domain.deliveries import Delivery, Outcome
from service.domain.errors import Unavailable
from service.domain.events import NormalizedEvent
from service.domain.override_log import OverrideEvent
from service.domain.resolution import Grant, ItemState, Override, SubjectState
from service.domain.subject import Subject
from service.domain.unknown_plans import NotedDelivery
from service.domain.usage import Answer, Counter, Kind, Period, Reservation, UsageEvent

T = TypeVar("T")


class StoreUnavailable(Unavailable):
    """The database cannot be reached or did not answer in time; the caller may retry."""

    def public_message(self) -> str:
        return "database unavailable; retry later"


class Clock(Protocol):
    def now_ms(self) -> int: ...


class OperatorEvents(Protocol):
    """What the application reports for operators; an adapter counts it (service/metrics.py:
    Prometheus). The application imports no metrics library."""

    def delivery_answered(self, outcome: Outcome) -> None: ...

    def unknown_plan(self) -> None:
        """A delivery named a plan the catalog lacks."""

    def read_failed(self) -> None:
        """A subject's stored state could not be resolved (answered with the default plan)."""

    def watch_message_failed(self) -> None:
        """A Watch message could not be built (sent with the default plan)."""

    def notification_attempt(self, outcome: str, count: int = 1) -> None:
        """Change-notification POSTs by outcome (delivered, retry, gone) and give-ups
        (failed)."""


class NoOperatorEvents:
    """Reports nothing (unit tests, tools)."""

    def delivery_answered(self, outcome: Outcome) -> None:
        pass

    def unknown_plan(self) -> None:
        pass

    def read_failed(self) -> None:
        pass

    def watch_message_failed(self) -> None:
        pass

    def notification_attempt(self, outcome: str, count: int = 1) -> None:
        pass


class SystemClock:
    """Wall-clock milliseconds: the one clock of a running service."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


# ---- inside one transaction ------------------------------------------------------------


class DeliveryRepository(Protocol):
    """Stored deliveries, keyed by event id (the idempotency key)."""

    async def add(self, delivery: Delivery, event: NormalizedEvent, lock_subject: bool) -> bool:
        """Store it PENDING (and, if `lock_subject`, create and lock its subject's row, so one
        subject's deliveries serialise). False when the event id is already stored."""

    async def record(
        self, delivery: Delivery, event: NormalizedEvent, outcome: Outcome, notes: Sequence[str]
    ) -> bool:
        """Store it with a final outcome and no effect. False when already stored."""

    async def finish(
        self, event_id: str, outcome: Outcome, notes: Sequence[str], subject: str | None
    ) -> None:
        """Set the outcome of a stored delivery."""

    async def subject_of(self, event_id: str) -> str | None: ...

    async def get(self, event_id: str, *, for_update: bool = False) -> StoredDelivery | None: ...

    async def set_event_ms(self, event_id: str, event_ms: int | None) -> None: ...

    async def mark(self, event_id: str, outcome: Outcome, note: str) -> None:
        """Set an outcome and add a note (a replay that learnt why a delivery cannot apply)."""

    async def scrub(self, event_id: str) -> None:
        """Remove personal data from one stored payload."""

    async def scrub_subject(self, subject: str) -> None:
        """Remove personal data from every stored payload of a subject."""


class SubjectRepository(Protocol):
    """Plan state per subject: items, deletion, versions, and the change log."""

    async def lock(self, subject: str) -> None:
        """Create the subject's row if need be and hold its lock until the end of the unit."""

    async def states(self, subjects: Sequence[str]) -> dict[str, SubjectState]: ...

    async def load(self, subject: str) -> Subject:
        """The subject's aggregate (items with the order that wrote them, deletion, grants,
        overrides not removed, version), in one read."""

    async def is_deleted(self, subject: str) -> bool: ...

    async def put_item(
        self,
        subject: str,
        item: ItemState,
        order: tuple[int, int, str],
        is_default: bool,
        event_id: str,
    ) -> bool:
        """Store `item` if it is new, or if `order` (event time, lifecycle rank, digest) is
        after the stored one's, and the item belongs to `subject`. False when nothing changed
        (an older event, or an item of another subject)."""

    async def observe(self, subject: str, item: ItemState) -> None:
        """Keep what an older event still tells (ever active, past-due observations)."""

    async def mark_deleted(self, subject: str, at_ms: int) -> bool:
        """Record the deletion unless a later one is stored; True when it changed."""

    async def note_created(self, subject: str, at_ms: int) -> None: ...

    async def commit_change(
        self,
        subject: str,
        plan: str,
        previous_plan: str,
        cause_id: str,
        cause_type: str,
        notes: Sequence[str],
    ) -> int:
        """Give the subject its next version, log and announce the change, record a plan
        change (when the plan differs) and mark the causing delivery APPLIED; the new version."""


class GrantRepository(Protocol):
    async def add(self, grant_id: str, subject: str, grant: Grant, reason: str) -> None: ...

    async def active_subject(self, grant_id: str) -> str | None:
        """The subject of an active grant; None when there is none."""

    async def revoke(self, grant_id: str, at_ms: int, reason: str) -> bool: ...


class OverrideRepository(Protocol):
    async def add(self, subject: str, override: Override) -> None: ...

    async def active_subject(self, override_id: str) -> str | None:
        """The subject of an override not removed; None when there is none."""

    async def remove(self, override_id: str, at_ms: int, reason: str) -> bool: ...


class UsageRepository(Protocol):
    """Usage counters, recorded calls and reservations (SPEC §10.1), inside a transaction."""

    async def lock(
        self, subject: str, meter: str, period: Period, now_ms: int, key: str | None
    ) -> tuple[Counter, Answer | None]:
        """The subject's counter of `meter` (made with `period` when new), locked until the
        transaction ends, with what live reservations hold at `now_ms`; and the answer a call
        with idempotency `key` got before, if any."""

    async def lock_many(
        self,
        counters: Sequence[tuple[str, str, Period]],
        calls: Sequence[tuple[str, str, str]],
        now_ms: int,
    ) -> tuple[dict[tuple[str, str], Counter], list[Answer | None]]:
        """`lock` for several counters at once (given in (subject, meter) order, each once),
        and the answer each call's (subject, meter, key) got before (aligned with `calls`)."""

    async def save(
        self,
        subject: str,
        meter: str,
        counter: Counter,
        kind: Kind,
        key: str,
        amount: int,
        answer: Answer,
        at_ms: int,
    ) -> None:
        """Store the counter and record the call (`kind`, its key, the amount, the answer and
        when), in order."""

    async def save_many(self, records: Sequence[Recorded], at_ms: int) -> None:
        """`save` for several calls, recorded in their order; each counter ends as its last
        record leaves it."""

    async def hold(self, reservation: Reservation) -> None: ...

    async def reservation(self, reservation_id: str) -> Reservation | None:
        """The reservation, locked until the transaction ends; None when unknown."""

    async def finish(self, reservation_id: str, committed_amount: int | None) -> None:
        """End a held reservation: committed (with the amount recorded) or released (None)."""


class UsageReader(Protocol):
    async def counters(self, subject: str, now_ms: int) -> dict[str, Counter]:
        """The subject's stored counters by meter, with what live reservations hold."""


class UnitOfWork(Protocol):
    """The repositories of one transaction."""

    @property
    def deliveries(self) -> DeliveryRepository: ...

    @property
    def subjects(self) -> SubjectRepository: ...

    @property
    def grants(self) -> GrantRepository: ...

    @property
    def overrides(self) -> OverrideRepository: ...

    @property
    def usage(self) -> UsageRepository: ...


class Transactions(Protocol):
    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run `work` in one transaction: committed when it returns, rolled back when it
        raises. Transient conflicts are retried (work may run again); an unreachable
        database raises StoreUnavailable."""


# ---- reads outside a transaction --------------------------------------------------------


class StateReader(Protocol):
    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]: ...


class DeliveryLog(Protocol):
    """Stored deliveries in event-id order, for replay and verification."""

    async def count_deliveries(self, selector: DeliverySelector) -> int: ...

    async def deliveries_page(
        self, selector: DeliverySelector, after: str, limit: int
    ) -> list[StoredDelivery]: ...


class Snapshot(DeliveryLog, StateReader, Protocol):
    """Everything as of one instant (a repeatable-read transaction)."""

    async def grants(self) -> list[tuple[str, Grant | None]]:
        """Every grant's subject and the grant (None when revoked)."""

    async def verification_rows(self) -> tuple[dict[str, tuple[Any, ...]], dict[str, int | None]]:
        """Every item row (rebuild.ITEM_STATE_COLUMNS) and every subject's deletion time."""

    async def override_rows(self) -> dict[str, tuple[Any, ...]]:
        """Every override's row (override_log.OVERRIDE_COLUMNS) by its id."""

    async def override_events(self) -> list[OverrideEvent]:
        """The log of every override set and remove, in order."""

    async def usage_counters(self) -> dict[tuple[str, str], Counter]:
        """Every usage counter by (subject, meter)."""

    async def usage_events_page(
        self, after: tuple[str, str, int], limit: int
    ) -> list[tuple[str, str, int, UsageEvent]]:
        """Recorded usage calls after `after` in (subject, meter, seq) order."""


class Operations(DeliveryLog, StateReader, Protocol):
    """What operators' jobs read and the housekeeping they do."""

    def snapshot(self) -> AbstractAsyncContextManager[Snapshot]: ...

    async def history(self, subject: str, limit: int) -> list[HistoryRow]: ...

    async def unknown_plan_deliveries(self, hours: int, limit: int) -> list[NotedDelivery]:
        """Deliveries stored in the last `hours` with a note naming an unknown plan, newest
        first, at most `limit`."""

    async def known_subjects(self, after: str, limit: int) -> list[str]: ...

    async def count_known_subjects(self) -> int: ...

    async def claim_reconcile_run(self, interval_seconds: float, owner: str) -> bool: ...

    async def scrub_older_than(self, retention_seconds: float) -> int: ...

    async def prune_change_log(self, retention_seconds: float) -> int: ...

    async def roll_up_usage(self, retention_seconds: float) -> int:
        """Replace each subject's and limit's usage records older than the retention by one
        `set` record of the total they reached (verify's replay arrives at the same counter);
        how many records went."""

    async def drop_abandoned_scratch_schemas(self) -> list[str]: ...


class ChangeLog(Protocol):
    """The log of committed changes that Watch streams follow."""

    async def change_log_bounds(self) -> tuple[int, int]: ...

    async def change_log_horizon(self) -> tuple[int, int]: ...

    async def change_log_identity(self) -> str: ...

    async def follow_changes(self, position: int, limit: int) -> ChangeBatch: ...

    async def changes_between(
        self, position: int, upper: int, subjects: Sequence[str] | None, limit: int
    ) -> tuple[list[tuple[int, int, str]], int]: ...


class Cache(Protocol):
    """Resolved entitlements kept in memory, invalidated by committed changes; `generation`
    moves on every invalidation, so a load that raced one is not cached."""

    generation: int

    def get(self, subject: str) -> CacheEntry | None: ...

    def put(self, subject: str, entry: CacheEntry, generation: int) -> bool: ...

    def replace(self, subject: str, entry: CacheEntry) -> None: ...

    def invalidate(self, subject: str) -> None: ...

    def clear(self) -> None: ...

    def set_live(self, live: bool) -> None: ...


# ---- elsewhere ---------------------------------------------------------------------------


class ClerkApiError(Exception):
    """Clerk's API did not give an answer; `retryable` says whether a later attempt may."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ClerkSubscriptions(Protocol):
    """Clerk's Backend API, as reconciliation and the catalog check use it."""

    async def subscription(self, subject: str) -> Mapping[str, Any] | None:
        """The payer's subscription; None when Clerk has none."""

    async def plans(self) -> list[Mapping[str, Any]]: ...


ClerkConnector = Callable[[], AbstractAsyncContextManager[ClerkSubscriptions]]


class ChangePublisher(Protocol):
    """Told of every committed change, for read-your-writes on this replica (other replicas
    hear PostgreSQL's NOTIFY)."""

    def on_change(self, version: int, subject: str) -> None: ...
