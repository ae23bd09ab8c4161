"""Normalising Clerk's event shapes into item updates (pure, plain values)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.domain.events import EventKind, ItemStatus, normalize_event, parse_status
from tests.support import FIXTURE_BASE_MS, load_fixture

pytestmark = pytest.mark.unit

USER = "user_2x9Kp4aB7cD1eF3gH5iJ"
ORG = "org_2x9Org4Ab7Cd"


def norm(payload: Any, type_hint: str = "", fallback_ms: int = 42) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return normalize_event(raw, type_hint, fallback_ms)


@pytest.mark.parametrize(
    ("fixture", "status", "slug", "subject"),
    [
        ("item_active_pro_month", ItemStatus.ACTIVE, "pro", USER),
        ("item_active_pro_annual", ItemStatus.ACTIVE, "pro", USER),
        ("item_active_lifetime", ItemStatus.ACTIVE, "lifetime", USER),
        ("item_canceled_pro", ItemStatus.CANCELED, "pro", USER),
        ("item_ended_pro", ItemStatus.ENDED, "pro", USER),
        ("item_past_due_pro", ItemStatus.PAST_DUE, "pro", USER),
        ("item_upcoming_free", ItemStatus.UPCOMING, "free_user", USER),
        ("item_active_org_pro", ItemStatus.ACTIVE, "pro", ORG),
    ],
)
def test_subscription_item_fixtures(
    fixture: str, status: ItemStatus, slug: str, subject: str
) -> None:
    payload = load_fixture(fixture)
    ev = norm(payload)
    assert ev.kind is EventKind.ITEMS
    assert ev.subject == subject
    (item,) = ev.items
    assert (item.status, item.plan_slug, item.subject) == (status, slug, subject)
    assert item.item_id == payload["data"]["id"]
    assert item.event_ms == payload["timestamp"]
    assert item.period_end_ms == payload["data"]["period_end"]
    assert item.plan_id == payload["data"]["plan_id"]


def test_payer_id_is_never_the_subject() -> None:
    payload = load_fixture("item_active_pro_month")
    del payload["data"]["payer"]["user_id"]
    ev = norm(payload)
    assert ev.kind is EventKind.UNPARSEABLE
    assert "payer" in (ev.error or "")


def test_org_id_wins_over_user_id() -> None:
    payload = load_fixture("item_active_org_pro")
    payload["data"]["payer"]["user_id"] = "user_member"
    assert norm(payload).subject == ORG


def test_status_in_payload_is_the_truth_not_the_event_name() -> None:
    payload = load_fixture("item_active_pro_month")
    payload["type"] = "subscriptionItem.updated"
    payload["data"]["status"] = "canceled"
    assert norm(payload).items[0].status is ItemStatus.CANCELED


@pytest.mark.parametrize("spelling", ["past_due", "pastDue", "PAST_DUE", "pastdue"])
def test_both_past_due_spellings(spelling: str) -> None:
    assert parse_status(spelling) is ItemStatus.PAST_DUE
    payload = load_fixture("item_past_due_pro")
    payload["data"]["status"] = spelling
    payload["type"] = "subscriptionItem.past_due"
    assert norm(payload).items[0].status is ItemStatus.PAST_DUE


def test_unknown_status_is_unparseable_not_guessed() -> None:
    payload = load_fixture("item_active_pro_month")
    payload["data"]["status"] = "frozen"
    ev = norm(payload)
    assert ev.kind is EventKind.UNPARSEABLE and "frozen" in (ev.error or "")


def test_subscription_event_carries_items() -> None:
    ev = norm(load_fixture("subscription_created_free"))
    assert ev.kind is EventKind.ITEMS and ev.subject == USER
    (item,) = ev.items
    assert item.plan_slug == "free_user" and item.is_default and item.status is ItemStatus.ACTIVE


def test_subscription_items_inherit_the_subscription_payer() -> None:
    payload = load_fixture("subscription_created_free")
    del payload["data"]["items"][0]["payer"]
    assert norm(payload).items[0].subject == USER


def test_subscription_without_items_is_record_only() -> None:
    payload = load_fixture("subscription_created_free")
    payload["data"]["items"] = []
    payload["type"] = "subscription.pastDue"
    ev = norm(payload)
    assert ev.kind is EventKind.RECORD_ONLY and ev.subject == USER


def test_subscription_with_items_of_several_payers_is_unparseable() -> None:
    payload = load_fixture("subscription_created_free")
    other = json.loads(json.dumps(payload["data"]["items"][0]))
    other["id"] = "subi_other"
    other["payer"]["user_id"] = "user_other"
    payload["data"]["items"].append(other)
    assert norm(payload).kind is EventKind.UNPARSEABLE


def test_backend_api_spelling_subscription_items() -> None:
    payload = load_fixture("subscription_created_free")
    payload["data"]["subscription_items"] = payload["data"].pop("items")
    assert len(norm(payload).items) == 1


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("billing.subscription.created", ItemStatus.ACTIVE),
        ("billing.subscription.updated", ItemStatus.ACTIVE),
        ("billing.subscription.deleted", ItemStatus.ENDED),
    ],
)
def test_validation_plan_names(event_type: str, status: ItemStatus) -> None:
    payload = {
        "type": event_type,
        "timestamp": 1000,
        "data": {"id": "sub_1", "user_id": "user_v", "plan": "pro"},
    }
    ev = norm(payload)
    assert ev.kind is EventKind.ITEMS and ev.subject == "user_v"
    (item,) = ev.items
    assert (item.status, item.plan_slug, item.item_id) == (status, "pro", "sub_1")


def test_validation_plan_deleted_overrides_payload_status() -> None:
    payload = load_fixture("item_active_pro_month")
    payload["type"] = "billing.subscription.deleted"
    assert norm(payload).items[0].status is ItemStatus.ENDED


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("user_created", EventKind.SUBJECT_CREATED),
        ("user_deleted", EventKind.SUBJECT_DELETED),
        ("payment_attempt_paid", EventKind.RECORD_ONLY),
    ],
)
def test_other_known_events(fixture: str, kind: EventKind) -> None:
    ev = norm(load_fixture(fixture))
    assert ev.kind is kind and ev.subject == USER and ev.items == ()


def test_organization_events() -> None:
    ev = norm({"type": "organization.deleted", "timestamp": 5, "data": {"id": ORG}})
    assert ev.kind is EventKind.SUBJECT_DELETED and ev.subject == ORG


def test_unknown_type_is_ignored() -> None:
    ev = norm({"type": "session.created", "data": {"id": "sess_1"}, "timestamp": 1})
    assert ev.kind is EventKind.IGNORED and ev.type == "session.created"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"str"',
        b"{",
        json.dumps({"type": "user.created"}).encode(),
    ],
)
def test_unreadable_bodies_are_unparseable(raw: bytes) -> None:
    assert norm(raw, "user.created").kind is EventKind.UNPARSEABLE


def test_type_hint_used_when_body_has_no_type() -> None:
    payload = load_fixture("item_active_pro_month")
    del payload["type"]
    ev = norm(payload, "subscriptionItem.active")
    assert ev.kind is EventKind.ITEMS and ev.type == "subscriptionItem.active"


def test_event_time_falls_back_to_updated_at_then_signing_time() -> None:
    payload = load_fixture("item_canceled_pro")
    del payload["timestamp"]
    assert norm(payload).event_ms == payload["data"]["updated_at"]
    del payload["data"]["updated_at"]
    assert norm(payload, fallback_ms=777).event_ms == 777


def test_invalid_subject_is_unparseable() -> None:
    payload = load_fixture("item_active_pro_month")
    payload["data"]["payer"]["user_id"] = "x" * 300
    assert norm(payload).kind is EventKind.UNPARSEABLE


def test_lifecycle_tie_break_order() -> None:
    def key(status: str) -> tuple[int, int, str]:
        payload = load_fixture("item_active_pro_month")
        payload["data"]["status"] = status
        order_key: tuple[int, int, str] = norm(payload).items[0].order_key
        return order_key

    ordered = ["incomplete", "active", "past_due", "canceled", "ended"]
    ranks = [key(s)[:2] for s in ordered]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert key("ended")[1] == key("expired")[1] == key("abandoned")[1]
    # Same time, same status, different content: still a total, content-defined order.
    payload = load_fixture("item_active_pro_month")
    a = norm(payload).items[0]
    payload["data"]["period_end"] = FIXTURE_BASE_MS + 1
    b = norm(payload).items[0]
    assert a.order_key != b.order_key and a.order_key[:2] == b.order_key[:2]


# ---- a number the JSON parser would refuse makes that one field missing --------------------


@pytest.mark.parametrize("digits", [41, 4301, 5000])
@pytest.mark.parametrize("field", ["timestamp", "period_end"])
def test_a_huge_integer_is_one_missing_field_not_an_unparseable_delivery(
    digits: int, field: str
) -> None:
    payload = load_fixture("item_active_pro_month")
    body = json.dumps(payload)
    original = json.dumps(payload[field] if field == "timestamp" else payload["data"][field])
    body = body.replace(f'"{field}": {original}', f'"{field}": {"9" * digits}', 1)
    event = normalize_event(body.encode(), "", 42)
    assert event.kind is EventKind.ITEMS, event.error
    assert any(f"beyond int64 ({digits} digits)" in note for note in event.notes)
    (item,) = event.items
    assert item.plan_slug == "pro" and item.status is ItemStatus.ACTIVE
    if field == "period_end":
        assert item.period_end_ms is None
    else:
        assert event.event_ms == payload["data"]["updated_at"]
