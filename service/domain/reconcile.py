"""Reconciliation: turn a Clerk Backend API snapshot into a synthetic event for what differs.

The snapshot is dated by Clerk's own `updated_at` (the newest one it carries), not by when we
fetched it: a read that lags behind a webhook we already applied is then older than that
webhook, and the store's ordering guard keeps the webhook's state. Only items that differ are
put in the synthetic event, so an in-sync subject changes nothing and gets no new version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from service.domain.events import (
    EventKind,
    ItemStatus,
    ItemUpdate,
    normalize_event,
    parse_ms,
)
from service.domain.resolution import ItemState

RECONCILE_EVENT_TYPE = "subscription.reconciled"
# Items in these states no longer entitle anything: one missing from the snapshot needs no repair.
_FINISHED = frozenset({ItemStatus.ENDED, ItemStatus.EXPIRED, ItemStatus.ABANDONED})


class SubjectKind(Enum):
    USER = "users"
    ORGANIZATION = "organizations"


_CLERK_ID = re.compile(r"^(user|org)_[A-Za-z0-9_]+$")


def clerk_kind(subject: str) -> SubjectKind | None:
    """Which Backend API collection a subject lives in; None when it is not a Clerk id
    (only such ids ever reach a URL path)."""
    match = _CLERK_ID.match(subject)
    if match is None:
        return None
    return SubjectKind.ORGANIZATION if match.group(1) == "org" else SubjectKind.USER


@dataclass(frozen=True)
class ReconcilePlan:
    """What a snapshot says must change: `payload` is the synthetic event (None: in sync)."""

    snapshot_ms: int
    differences: tuple[str, ...]
    payload: bytes | None
    error: str | None = None


def snapshot_time(subscription: Mapping[str, Any], fetched_at_ms: int) -> int:
    """The newest `updated_at` in the snapshot; the fetch time only when Clerk gives none."""
    times = [parse_ms(subscription.get("updated_at"))]
    items = _raw_items(subscription)
    times += [parse_ms(item.get("updated_at")) for item in items if isinstance(item, dict)]
    known = [t for t in times if t is not None]
    return max(known) if known else fetched_at_ms


def _raw_items(subscription: Mapping[str, Any]) -> list[Any]:
    raw = subscription.get("subscription_items")
    if raw is None:
        raw = subscription.get("items")
    return raw if isinstance(raw, list) else []


def _payer(subject: str) -> dict[str, str]:
    key = "organization_id" if clerk_kind(subject) is SubjectKind.ORGANIZATION else "user_id"
    return {key: subject}


def _minimal_item(raw: Mapping[str, Any], subject: str) -> dict[str, Any]:
    """Only what entitlement needs: the synthetic payload keeps no personal data."""
    plan = raw.get("plan")
    plan_obj = plan if isinstance(plan, dict) else {}
    return {
        "id": raw.get("id"),
        "object": "commerce_subscription_item",
        "status": raw.get("status"),
        "plan_id": raw.get("plan_id") or plan_obj.get("id"),
        "plan": {
            "id": plan_obj.get("id") or raw.get("plan_id"),
            "slug": plan_obj.get("slug") or (plan if isinstance(plan, str) else None),
            "is_default": plan_obj.get("is_default") is True,
        },
        "period_end": raw.get("period_end"),
        "past_due_at": raw.get("past_due_at"),
        "payer": _payer(subject),
    }


def _ended_item(item: ItemState, subject: str) -> dict[str, Any]:
    return {
        "id": item.item_id,
        "object": "commerce_subscription_item",
        "status": ItemStatus.ENDED.value,
        "plan_id": item.plan_id,
        "plan": {"id": item.plan_id, "slug": item.plan_slug, "is_default": False},
        "period_end": item.period_end_ms,
        "past_due_at": item.past_due_at_ms,
        "payer": _payer(subject),
    }


def _same(update: ItemUpdate, stored: ItemState) -> bool:
    return (
        update.status is stored.status
        and update.plan_slug == stored.plan_slug
        and update.plan_id == stored.plan_id
        and update.period_end_ms == stored.period_end_ms
        # The API's items often carry no `past_due_at`: the stored grace anchor then stands.
        and update.past_due_at_ms in (None, stored.past_due_at_ms)
    )


def _event(subject: str, snapshot_ms: int, items: Sequence[Mapping[str, Any]]) -> bytes:
    envelope = {
        "object": "event",
        "type": RECONCILE_EVENT_TYPE,
        "timestamp": snapshot_ms,
        "source": "reconcile",
        "data": {"object": "commerce_subscription", "payer": _payer(subject), "items": items},
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def plan_reconciliation(
    subject: str,
    subscription: Mapping[str, Any],
    stored_items: Sequence[ItemState],
    fetched_at_ms: int,
) -> ReconcilePlan:
    """Compare Clerk's subscription for `subject` with the stored items.

    Items the snapshot shows differently, or that are stored but missing from it while still
    entitling, go into one synthetic `subscription.reconciled` event dated by the snapshot.
    """
    snapshot_ms = snapshot_time(subscription, fetched_at_ms)
    raw_items = [_minimal_item(r, subject) for r in _raw_items(subscription) if isinstance(r, dict)]
    parsed = normalize_event(_event(subject, snapshot_ms, raw_items), RECONCILE_EVENT_TYPE, 0)
    if parsed.kind is EventKind.UNPARSEABLE:
        return ReconcilePlan(snapshot_ms, (), None, f"the API snapshot is unusable: {parsed.error}")
    stored = {item.item_id: item for item in stored_items}
    wanted: list[Mapping[str, Any]] = []
    differences: list[str] = []
    by_id = {raw["id"]: raw for raw in raw_items}
    for update in parsed.items:
        old = stored.get(update.item_id)
        if old is not None and _same(update, old):
            continue
        was = f"{old.status.value} {old.plan_slug or old.plan_id}" if old else "missing"
        differences.append(
            f"{update.item_id}: stored {was}, Clerk {update.status.value} "
            f"{update.plan_slug or update.plan_id}"
        )
        wanted.append(by_id[update.item_id])
    seen = {update.item_id for update in parsed.items}
    for item in stored_items:
        if item.item_id in seen or item.status in _FINISHED:
            continue
        differences.append(f"{item.item_id}: stored {item.status.value}, not at Clerk (ended)")
        wanted.append(_ended_item(item, subject))
    if not wanted:
        return ReconcilePlan(snapshot_ms, (), None)
    return ReconcilePlan(snapshot_ms, tuple(differences), _event(subject, snapshot_ms, wanted))
