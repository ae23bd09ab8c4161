"""What the store returns and raises: outcomes, results, stored deliveries, change batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.domain.errors import Unavailable
from service.domain.events import NormalizedEvent


class StoreUnavailable(Unavailable):
    """The database cannot be reached or did not answer in time; the caller may retry."""

    def public_message(self) -> str:
        return "database unavailable; retry later"


class ItemOwnedElsewhere(Exception):
    """A delivery would move an item to another subject: it is recorded IGNORED instead."""


# Text columns of a delivery recorded without its effects (type, notes) are cut to this.
MAX_STORED_TEXT = 1000


class Outcome(StrEnum):
    """What became of a delivery (stored as its text; the wire enum has the same names)."""

    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    STALE = "STALE"
    IGNORED = "IGNORED"
    UNPARSEABLE = "UNPARSEABLE"
    PENDING = "PENDING"


@dataclass(frozen=True)
class ApplyResult:
    outcome: str
    subject: str | None
    plan: str | None
    previous_plan: str | None
    version: int
    notes: tuple[str, ...] = ()
    recorded: bool = False  # the delivery row already carries the outcome


@dataclass(frozen=True)
class HistoryRow:
    kind: str  # "delivery" | "plan_change"
    recorded_at: datetime
    event_id: str | None
    type: str | None
    outcome: str | None
    event_ms: int | None
    from_plan: str | None
    to_plan: str | None
    note: str
    source: str | None = None


@dataclass(frozen=True)
class StoredDelivery:
    """A delivery as stored: enough to normalise and apply it again."""

    event_id: str
    type: str
    payload: bytes
    outcome: str
    received_at: datetime
    signed_at_ms: int | None
    source: str

    @property
    def fallback_ms(self) -> int:
        """The event time used when the payload carries none (as on first delivery)."""
        if self.signed_at_ms is not None:
            return self.signed_at_ms
        return int(self.received_at.timestamp() * 1000)


@dataclass(frozen=True)
class DeliverySelector:
    """Which stored deliveries a replay or verification walks."""

    subject: str | None = None
    unparseable: bool = False

    def where(self, first_arg: int) -> str:
        if self.subject is not None:
            return f"subject = ${first_arg}"
        if self.unparseable:
            return "outcome = 'UNPARSEABLE'"
        return "true"

    @property
    def args(self) -> tuple[Any, ...]:
        return (self.subject,) if self.subject is not None else ()


@dataclass(frozen=True)
class ReplayResult:
    delivery: StoredDelivery
    event: NormalizedEvent
    result: ApplyResult

    @property
    def changed(self) -> bool:
        """Whether this replay changed stored state (rather than finding its effect there)."""
        return self.result.recorded


@dataclass(frozen=True)
class ChangeBatch:
    """What the follower read: changes (txid, version, subject), where to go on from, the
    transaction-id ceiling at the time, and whether it reached the horizon."""

    changes: list[tuple[int, int, str]]
    next_position: int
    xmax: int
    complete: bool
