"""The pure part of reconciliation: what a Clerk API snapshot says must change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.adapters.clerk_api import retry_after_seconds
from service.config import load_catalog
from service.domain.catalog import check_catalog
from service.domain.events import EventKind, ItemStatus, normalize_event
from service.domain.reconcile import (
    RECONCILE_EVENT_TYPE,
    clerk_kind,
    plan_reconciliation,
    snapshot_time,
)
from service.domain.resolution import ItemState

pytestmark = pytest.mark.unit

WHO = "user_rec"
T = 1_767_225_600_000


def api_item(item_id: str, status: str, slug: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "status": status,
        "plan": {"id": f"cplan_{slug}", "slug": slug, "is_default": slug == "free_user"},
        "plan_id": f"cplan_{slug}",
        "period_end": extra.pop("period_end", None),
        "payer": {"user_id": WHO, "email": "ada@example.com", "first_name": "Ada"},
        **extra,
    }


def stored(item_id: str, status: ItemStatus, slug: str, event_ms: int = T) -> ItemState:
    return ItemState(
        item_id=item_id,
        status=status,
        plan_slug=slug,
        plan_id=f"cplan_{slug}",
        period_end_ms=None,
        past_due_at_ms=None,
        event_ms=event_ms,
        ever_active=status is ItemStatus.ACTIVE,
    )


def test_in_sync_gives_no_event() -> None:
    sub = {"updated_at": T, "subscription_items": [api_item("subi_1", "active", "pro")]}
    plan = plan_reconciliation(WHO, sub, [stored("subi_1", ItemStatus.ACTIVE, "pro")], T + 5)
    assert plan.payload is None and plan.differences == () and plan.error is None


def test_missing_item_and_vanished_item_make_one_minimal_event() -> None:
    sub = {"updated_at": T + 10, "subscription_items": [api_item("subi_pro", "active", "pro")]}
    items = [
        stored("subi_free", ItemStatus.ACTIVE, "free_user"),
        stored("subi_old", ItemStatus.ENDED, "pro"),  # finished: needs no repair
    ]
    plan = plan_reconciliation(WHO, sub, items, T + 99)
    assert plan.snapshot_ms == T + 10 and plan.payload is not None
    assert len(plan.differences) == 2
    assert b"ada@example.com" not in plan.payload and b"Ada" not in plan.payload
    event = normalize_event(plan.payload, RECONCILE_EVENT_TYPE, 0)
    assert event.kind is EventKind.ITEMS and event.subject == WHO and event.event_ms == T + 10
    assert {(i.item_id, i.status) for i in event.items} == {
        ("subi_pro", ItemStatus.ACTIVE),
        ("subi_free", ItemStatus.ENDED),
    }
    assert json.loads(plan.payload)["source"] == "reconcile"


def test_only_differing_items_are_in_the_event() -> None:
    sub = {
        "updated_at": T,
        "subscription_items": [
            api_item("subi_a", "active", "pro"),
            api_item("subi_b", "canceled", "pro"),
        ],
    }
    items = [stored("subi_a", ItemStatus.ACTIVE, "pro"), stored("subi_b", ItemStatus.ACTIVE, "pro")]
    plan = plan_reconciliation(WHO, sub, items, T)
    assert plan.payload is not None
    event = normalize_event(plan.payload, RECONCILE_EVENT_TYPE, 0)
    assert [i.item_id for i in event.items] == ["subi_b"]


def test_snapshot_is_dated_by_clerk_not_by_the_fetch() -> None:
    sub = {"updated_at": T, "subscription_items": [{"updated_at": T + 7}, "junk"]}
    assert snapshot_time(sub, T + 1_000_000) == T + 7
    assert snapshot_time({"subscription_items": []}, T + 3) == T + 3


def test_unusable_snapshot_is_an_error_not_a_change() -> None:
    sub = {"updated_at": T, "subscription_items": [{"id": "subi_x", "status": "weird"}]}
    plan = plan_reconciliation(WHO, sub, [], T)
    assert plan.payload is None and plan.error is not None and "unusable" in plan.error


def test_clerk_kind_by_prefix() -> None:
    assert clerk_kind("org_1") is not None and clerk_kind("user_1") is not None
    assert clerk_kind("acct_1") is None
    for hostile in ("user_x/../../billing/plans", "org_a?x=1", "user_", "user_é"):
        assert clerk_kind(hostile) is None


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_catalog_check_both_directions() -> None:
    catalog = load_catalog(None)
    check = check_catalog(
        catalog,
        [
            {"id": "cplan_1", "slug": "pro", "name": "Pro"},
            {"id": "cplan_2", "slug": "team", "name": "Team"},
        ],
    )
    assert [p.slug for p in check.unmapped] == ["team"] and not check.ok
    assert "lifetime" in check.unknown_slugs and "pro" not in check.unknown_slugs
