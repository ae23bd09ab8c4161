"""What the ports hand to the use cases and what the use cases return, beyond the domain's
values: stored deliveries, which of them a job walks, history rows, change batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.domain.deliveries import ApplyResult, Delivery
from service.domain.events import NormalizedEvent
from service.domain.resolution import Entitlements, SubjectState


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

    def as_delivery(self) -> Delivery:
        """The delivery as first received (same fallback time: it reads the same way)."""
        received_ms = int(self.received_at.timestamp() * 1000)
        signed = self.signed_at_ms if self.signed_at_ms is not None else received_ms
        return Delivery(self.event_id, self.type, self.payload, received_ms, signed, self.source)


@dataclass(frozen=True)
class DeliverySelector:
    """Which stored deliveries a replay or verification walks: all, one subject's, or the
    UNPARSEABLE ones."""

    subject: str | None = None
    unparseable: bool = False


@dataclass(frozen=True)
class ReplayResult:
    delivery: StoredDelivery
    event: NormalizedEvent
    result: ApplyResult

    @property
    def changed(self) -> bool:
        """Whether this replay changed stored state (rather than finding its effect there)."""
        return self.result.committed


@dataclass(frozen=True)
class HistoryRow:
    kind: str  # "delivery" | "plan_change" | "grant" | "override"
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
class ChangeBatch:
    """What the follower read: changes (txid, version, subject), where to go on from, the
    transaction-id ceiling at the time, and whether it reached the horizon."""

    changes: list[tuple[int, int, str]]
    next_position: int
    xmax: int
    complete: bool


@dataclass(slots=True, eq=False)
class CacheEntry:
    """A subject's stored state and its resolution; immutable once made, so an entrypoint
    may memoise what it builds from one in `memo` (a response per feature, say), which lives
    and dies with the entry: the cache alone decides how long. A slot rather than a weak
    mapping of entries: CanUse looks it up on every call."""

    state: SubjectState
    entitlements: Entitlements
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    # Until when the resolution holds (Entitlements.shown_until_ms), worked out once: every
    # cached read compares it with now.
    until_ms: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.until_ms = self.entitlements.shown_until_ms
