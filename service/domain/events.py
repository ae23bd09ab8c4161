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
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import Any

from service.domain.bounds import bounded_time_ms, clamp_future, echo, parse_json_int
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
    past_due_at_ms: int | None  # the item's `past_due_at`, else its subscription's
    is_default: bool
    event_ms: int
    digest: str
    # Not part of `digest` (digests stored before these existed must compare the same).
    period_start_ms: int | None = None
    free_trial: bool = False

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


MAX_ITEM_ID_BYTES = 255


def parse_ms(raw: object) -> int | None:
    """A time value in milliseconds within the plausible window, else None (see bounds)."""
    return bounded_time_ms(raw).ms


def _time(raw: object, what: str, notes: list[str]) -> int | None:
    parsed = bounded_time_ms(raw, what)
    if parsed.note is not None:
        notes.append(parsed.note)
    return parsed.ms


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
    notes: list[str],
    forced_status: ItemStatus | None = None,
    default_status: ItemStatus | None = None,
    synthetic_id: str | None = None,
    past_due_fallback_ms: int | None = None,
) -> ItemUpdate:
    subject = _checked_subject(_subject_of(raw, subject_fallback), "subscription item")
    item_id = _str(raw.get("id")) or synthetic_id
    if item_id is None:
        raise _Unparseable("subscription item without an id")
    if len(item_id.encode("utf-8", "replace")) > MAX_ITEM_ID_BYTES or not item_id.isprintable():
        raise _Unparseable(
            f"subscription item id must be 1 to {MAX_ITEM_ID_BYTES} bytes of printable "
            f"characters, got {echo(item_id)}"
        )
    status = forced_status or parse_status(raw.get("status"))
    if status is None:
        if raw.get("status") is not None:
            raise _Unparseable(
                f"subscription item {item_id}: unknown status {echo(raw.get('status'))}"
            )
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
    period_end_ms = _time(raw.get("period_end"), f"item {item_id} period_end", notes)
    period_start_ms = _time(raw.get("period_start"), f"item {item_id} period_start", notes)
    past_due_at_ms = _time(raw.get("past_due_at"), f"item {item_id} past_due_at", notes)
    if past_due_at_ms is None:
        past_due_at_ms = past_due_fallback_ms
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
        period_start_ms=period_start_ms,
        free_trial=raw.get("is_free_trial") is True,
    )


def _event_time(
    envelope: Mapping[str, Any],
    data: Mapping[str, Any],
    fallback_ms: int,
    received_ms: int | None,
    notes: list[str],
) -> int:
    """Envelope `timestamp`, else `data.updated_at`, else the delivery's signing time; never
    more than a day after the delivery was received (a time that far ahead would freeze the
    item: every real event after it would be older)."""
    event_ms = (
        _time(envelope.get("timestamp"), "envelope timestamp", notes)
        or _time(data.get("updated_at"), "data.updated_at", notes)
        or fallback_ms
    )
    event_ms, note = clamp_future(event_ms, received_ms)
    if note is not None:
        notes.append(note)
    return event_ms


def normalize_event(
    payload: bytes, type_hint: str, fallback_ms: int, received_ms: int | None = None
) -> NormalizedEvent:
    """Turn one delivery's raw JSON body into what it means for plan state. Never raises.

    `type_hint` is the type the delivery was announced with (used when the body has none);
    `fallback_ms` is the event time to use when the body carries no timestamp; `received_ms`,
    when given, bounds how far in the future the event time may be.
    """
    try:
        return _normalize_body(payload, type_hint, fallback_ms, received_ms)
    except Exception as exc:  # deep nesting, odd types: whatever it is, the delivery is kept
        return NormalizedEvent(
            EventKind.UNPARSEABLE, type_hint, error=f"cannot be read ({type(exc).__name__})"
        )


def _normalize_body(
    payload: bytes, type_hint: str, fallback_ms: int, received_ms: int | None
) -> NormalizedEvent:
    try:
        envelope = json.loads(payload, parse_int=parse_json_int)
    except (ValueError, UnicodeDecodeError):
        return NormalizedEvent(EventKind.UNPARSEABLE, type_hint, error="body is not JSON")
    except RecursionError:
        return NormalizedEvent(EventKind.UNPARSEABLE, type_hint, error="body is nested too deep")
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
    notes: list[str] = []
    event_ms = _event_time(envelope, data, fallback_ms, received_ms, notes)
    try:
        event = _normalize(event_type, data, event_ms, notes)
    except _Unparseable as exc:
        event = NormalizedEvent(
            EventKind.UNPARSEABLE, event_type, event_ms=event_ms, error=str(exc)
        )
    return replace(event, notes=tuple(notes))


def _subject_about(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The user or organization an event of any other type is about, if it names one: so a
    deletion finds (and scrubs) every stored payload that mentions the subject."""
    candidates: list[object] = []
    if event_type.startswith(("user.", "organization.")):
        candidates.append(data.get("id"))
    candidates.append(_subject_of(data))
    for key in ("organization", "public_user_data"):
        nested = _obj(data.get(key))
        candidates += [nested.get("id"), nested.get("user_id")]
    for candidate in candidates:
        if (
            isinstance(candidate, str)
            and candidate.startswith(("user_", "org_"))
            and subject_problem(candidate) is None
        ):
            return candidate
    return None


def _normalize(
    event_type: str, data: Mapping[str, Any], event_ms: int, notes: list[str]
) -> NormalizedEvent:
    if event_type.startswith(SUBSCRIPTION_ITEM_PREFIX):
        item = _item_update(data, event_ms=event_ms, subject_fallback=None, notes=notes)
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
        # `subscription.pastDue` carries `past_due_at` on the subscription, not on its items.
        subscription_past_due = _time(data.get("past_due_at"), "subscription past_due_at", notes)
        items = tuple(
            _item_update(
                _obj(raw),
                event_ms=event_ms,
                subject_fallback=payer_subject,
                notes=notes,
                past_due_fallback_ms=subscription_past_due,
            )
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
            notes=notes,
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

    return NormalizedEvent(
        EventKind.IGNORED, event_type, _subject_about(event_type, data), event_ms=event_ms
    )
