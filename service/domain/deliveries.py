"""A delivery (one webhook, or a synthetic reconcile event) and what became of it.

Pure values: the apply use case (service/application/deliveries.py) decides the outcome; the
PostgreSQL adapter stores it as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.domain.events import NormalizedEvent, normalize_event


class Outcome(StrEnum):
    """What became of a delivery (stored as its text; the wire enum has the same names)."""

    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    STALE = "STALE"
    IGNORED = "IGNORED"
    UNPARSEABLE = "UNPARSEABLE"
    PENDING = "PENDING"


class ItemOwnedElsewhere(Exception):
    """A delivery would move an item to another subject: it is recorded IGNORED instead."""


WEBHOOK = "webhook"
RECONCILE = "reconcile"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as received: its raw body is kept whatever it holds.

    `signed_at_ms` is the event time used when the body carries none (the Svix signature time,
    or a reconcile snapshot's time); it is stored, so a replay reads the body the same way.
    """

    event_id: str
    type: str
    payload: bytes
    received_ms: int
    signed_at_ms: int
    source: str = WEBHOOK

    def normalize(self) -> NormalizedEvent:
        return normalize_event(self.payload, self.type, self.signed_at_ms, self.received_ms)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying (or replaying) a delivery, or a grant, did to its subject."""

    outcome: Outcome
    subject: str | None
    plan: str | None
    previous_plan: str | None
    version: int
    notes: tuple[str, ...] = ()
    # A new version of the subject was committed (watchers and caches must hear of it); the
    # delivery's row then already carries its outcome.
    committed: bool = False
