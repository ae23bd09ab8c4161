"""Normalising Clerk's webhook events into subscription-item updates.

Clerk's billing payloads are in beta: keys go missing, both `pastDue` and `past_due` are spelled,
`subscription.*` events carry their items in `data.items`. Everything here is defensive and pure,
so the rules can be tested with plain values and a payload that cannot be read is reported,
never raised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from service.domain.subjects import subject_problem


class ItemStatus(StrEnum):
    INCOMPLETE = "incomplete"
    UPCOMING = "upcoming"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    ENDED = "ended"
    EXPIRED = "expired"
    ABANDONED = "abandoned"


# Equal event timestamps are resolved by lifecycle order, so the result never depends on
# arrival order (SPEC §3).
LIFECYCLE_RANK: Mapping[ItemStatus, int] = {
    ItemStatus.INCOMPLETE: 0,
    ItemStatus.UPCOMING: 0,
    ItemStatus.ACTIVE: 1,
    ItemStatus.PAST_DUE: 2,
    ItemStatus.CANCELED: 3,
    ItemStatus.ENDED: 4,
    ItemStatus.EXPIRED: 4,
    ItemStatus.ABANDONED: 4,
}

_STATUS_SPELLINGS: Mapping[str, ItemStatus] = {
    **{s.value: s for s in ItemStatus},
    "pastdue": ItemStatus.PAST_DUE,
    "past-due": ItemStatus.PAST_DUE,
    "cancelled": ItemStatus.CANCELED,
}


def parse_status(raw: object) -> ItemStatus | None:
    if not isinstance(raw, str):
        return None
    return _STATUS_SPELLINGS.get(raw.strip().lower()) or _STATUS_SPELLINGS.get(
        raw.strip().replace("_", "").lower()
    )


class EventKind(Enum):
    ITEMS = "items"  # subscription item updates
    SUBJECT_CREATED = "subject_created"
    SUBJECT_DELETED = "subject_deleted"
    RECORD_ONLY = "record_only"  # stored for audit, changes no state (paymentAttempt.*)
    IGNORED = "ignored"  # a type this service does not use
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """One subscription item as one event saw it."""

    item_id: str
    subject: str
    status: ItemStatus
    plan_slug: str | None
    plan_id: str | None
    period_end_ms: int | None
    past_due_at_ms: int | None
    is_default: bool
    event_ms: int
    digest: str

    @property
    def lifecycle_rank(self) -> int:
        return LIFECYCLE_RANK[self.status]

    @property
    def order_key(self) -> tuple[int, int, str]:
        """Total order of updates to one item: event time, lifecycle, then content digest."""
        return (self.event_ms, self.lifecycle_rank, self.digest)


@dataclass(frozen=True, slots=True)
class NormalizedEvent:
    kind: EventKind
    type: str
    subject: str | None = None
    event_ms: int | None = None
    items: tuple[ItemUpdate, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = field(default=())


SUBSCRIPTION_ITEM_PREFIX = "subscriptionItem."
SUBSCRIPTION_PREFIX = "subscription."
LEGACY_UPSERT_TYPES = frozenset({"billing.subscription.created", "billing.subscription.updated"})
LEGACY_DELETE_TYPE = "billing.subscription.deleted"
SUBJECT_CREATED_TYPES = frozenset({"user.created", "organization.created"})
SUBJECT_DELETED_TYPES = frozenset({"user.deleted", "organization.deleted"})
PAYMENT_ATTEMPT_PREFIX = "paymentAttempt."


class _Unparseable(Exception):
    pass


def parse_ms(raw: object) -> int | None:
    """A millisecond timestamp, accepting ints, integral floats and numeric strings."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


def _str(raw: object) -> str | None:
    return raw if isinstance(raw, str) and raw else None


def _obj(raw: object) -> Mapping[str, Any]:
    return raw if isinstance(raw, dict) else {}


def _subject_of(data: Mapping[str, Any], fallback: str | None = None) -> str | None:
    """The payer's org id when present, else its user id (never `payer.id`, a cpayer_ id)."""
    payer = _obj(data.get("payer"))
    for candidate in (
        payer.get("organization_id"),
        payer.get("user_id"),
        data.get("organization_id"),
        data.get("user_id"),
    ):
        if _str(candidate):
            return str(candidate)
    return fallback


def _checked_subject(subject: str | None, what: str) -> str:
    if subject is None:
        raise _Unparseable(f"{what}: no payer user_id or organization_id")
    problem = subject_problem(subject)
    if problem is not None:
        raise _Unparseable(f"{what}: {problem}")
    return subject


def _item_update(
    raw: Mapping[str, Any],
    *,
    event_ms: int,
    subject_fallback: str | None,
    forced_status: ItemStatus | None = None,
    default_status: ItemStatus | None = None,
    synthetic_id: str | None = None,
) -> ItemUpdate:
    subject = _checked_subject(_subject_of(raw, subject_fallback), "subscription item")
    item_id = _str(raw.get("id")) or synthetic_id
    if item_id is None:
        raise _Unparseable("subscription item without an id")
    status = forced_status or parse_status(raw.get("status"))
    if status is None:
        if raw.get("status") is not None:
            raise _Unparseable(f"subscription item {item_id}: unknown status {raw.get('status')!r}")
        if default_status is None:
            raise _Unparseable(f"subscription item {item_id}: no status")
        status = default_status
    plan = raw.get("plan")
    plan_obj = _obj(plan)
    plan_slug = _str(plan_obj.get("slug")) or _str(raw.get("plan_slug")) or _str(plan)
    plan_id = _str(raw.get("plan_id")) or _str(plan_obj.get("id"))
    if plan_slug is None and plan_id is None:
        raise _Unparseable(f"subscription item {item_id}: no plan slug or plan id")
    is_default = plan_obj.get("is_default") is True
    period_end_ms = parse_ms(raw.get("period_end"))
    past_due_at_ms = parse_ms(raw.get("past_due_at"))
    content = json.dumps(
        [subject, status.value, plan_slug, plan_id, period_end_ms, past_due_at_ms, is_default],
        separators=(",", ":"),
    )
    return ItemUpdate(
        item_id=item_id,
        subject=subject,
        status=status,
        plan_slug=plan_slug,
        plan_id=plan_id,
        period_end_ms=period_end_ms,
        past_due_at_ms=past_due_at_ms,
        is_default=is_default,
        event_ms=event_ms,
        digest=hashlib.sha256(content.encode()).hexdigest()[:16],
    )


def _event_time(envelope: Mapping[str, Any], data: Mapping[str, Any], fallback_ms: int) -> int:
    """Envelope `timestamp`, else `data.updated_at`, else the delivery's signing time."""
    return parse_ms(envelope.get("timestamp")) or parse_ms(data.get("updated_at")) or fallback_ms


def normalize_event(payload: bytes, type_hint: str, fallback_ms: int) -> NormalizedEvent:
    """Turn one delivery's raw JSON body into what it means for plan state.

    `type_hint` is the type the delivery was announced with (used when the body has none);
    `fallback_ms` is the event time to use when the body carries no timestamp.
    """
    try:
        envelope = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return NormalizedEvent(EventKind.UNPARSEABLE, type_hint, error="body is not JSON")
    if not isinstance(envelope, dict):
        return NormalizedEvent(EventKind.UNPARSEABLE, type_hint, error="body is not a JSON object")
    event_type = _str(envelope.get("type")) or type_hint
    data = envelope.get("data")
    if not isinstance(data, dict):
        if event_type.startswith(("subscription", "billing.", "user.", "organization.")):
            return NormalizedEvent(
                EventKind.UNPARSEABLE, event_type, error="`data` is not an object"
            )
        return NormalizedEvent(EventKind.IGNORED, event_type)
    event_ms = _event_time(envelope, data, fallback_ms)
    try:
        return _normalize(event_type, data, event_ms)
    except _Unparseable as exc:
        return NormalizedEvent(EventKind.UNPARSEABLE, event_type, event_ms=event_ms, error=str(exc))


def _normalize(event_type: str, data: Mapping[str, Any], event_ms: int) -> NormalizedEvent:
    if event_type.startswith(SUBSCRIPTION_ITEM_PREFIX):
        item = _item_update(data, event_ms=event_ms, subject_fallback=None)
        return NormalizedEvent(EventKind.ITEMS, event_type, item.subject, event_ms, (item,))

    if event_type.startswith(SUBSCRIPTION_PREFIX):
        payer_subject = _subject_of(data)
        raw_items = data.get("items")
        if raw_items is None:
            raw_items = data.get("subscription_items")
        if raw_items is None:
            raw_items = []
        if not isinstance(raw_items, list):
            raise _Unparseable("subscription `items` is not a list")
        items = tuple(
            _item_update(_obj(raw), event_ms=event_ms, subject_fallback=payer_subject)
            for raw in raw_items
        )
        if len({item.subject for item in items}) > 1:
            raise _Unparseable("subscription items belong to several payers")
        subject = items[0].subject if items else payer_subject
        subject = _checked_subject(subject, "subscription")
        if not items:
            return NormalizedEvent(EventKind.RECORD_ONLY, event_type, subject, event_ms)
        return NormalizedEvent(EventKind.ITEMS, event_type, subject, event_ms, items)

    if event_type in LEGACY_UPSERT_TYPES or event_type == LEGACY_DELETE_TYPE:
        subject = _checked_subject(_subject_of(data), "billing.subscription")
        item = _item_update(
            data,
            event_ms=event_ms,
            subject_fallback=subject,
            forced_status=ItemStatus.ENDED if event_type == LEGACY_DELETE_TYPE else None,
            default_status=ItemStatus.ACTIVE,
            synthetic_id=f"legacy:{subject}",
        )
        return NormalizedEvent(EventKind.ITEMS, event_type, subject, event_ms, (item,))

    if event_type in SUBJECT_CREATED_TYPES or event_type in SUBJECT_DELETED_TYPES:
        subject = _checked_subject(_str(data.get("id")), event_type)
        kind = (
            EventKind.SUBJECT_CREATED
            if event_type in SUBJECT_CREATED_TYPES
            else EventKind.SUBJECT_DELETED
        )
        return NormalizedEvent(kind, event_type, subject, event_ms)

    if event_type.startswith(PAYMENT_ATTEMPT_PREFIX):
        subject = _subject_of(data)
        if subject is not None and subject_problem(subject) is not None:
            subject = None
        return NormalizedEvent(EventKind.RECORD_ONLY, event_type, subject, event_ms)

    return NormalizedEvent(EventKind.IGNORED, event_type, event_ms=event_ms)
