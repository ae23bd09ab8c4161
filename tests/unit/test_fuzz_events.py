"""Fuzzing the event parser: any bytes, and any JSON shaped like Clerk's, normalise to an
event (possibly UNPARSEABLE) — never an exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.events import EventKind, NormalizedEvent, normalize_event

pytestmark = pytest.mark.unit

TYPES = [
    "subscriptionItem.active",
    "subscriptionItem.pastDue",
    "subscriptionItem.past_due",
    "subscription.created",
    "subscription.updated",
    "billing.subscription.created",
    "billing.subscription.deleted",
    "user.created",
    "user.deleted",
    "organization.deleted",
    "paymentAttempt.updated",
    "session.created",
    "",
]
KEYS = [
    "id",
    "status",
    "plan",
    "slug",
    "payer",
    "user_id",
    "organization_id",
    "items",
    "period_end",
    "past_due_at",
    "timestamp",
    "updated_at",
    "plan_id",
    "is_default",
    "data",
]

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(["active", "past_due", "pastDue", "canceled", "ended", "pro", "user_1"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)


@given(st.binary(max_size=2000), st.sampled_from(TYPES), st.integers())
@settings(max_examples=300)
def test_arbitrary_bytes_never_raise(raw: bytes, type_hint: str, fallback: int) -> None:
    assert isinstance(normalize_event(raw, type_hint, fallback), NormalizedEvent)


@given(st.sampled_from(TYPES), json_values, json_values)
@settings(max_examples=500)
def test_clerk_shaped_json_never_raises(event_type: str, data: Any, timestamp: Any) -> None:
    body = json.dumps({"type": event_type, "timestamp": timestamp, "data": data}).encode()
    event = normalize_event(body, "", 1)
    assert isinstance(event, NormalizedEvent)
    if event.kind is EventKind.ITEMS:
        assert event.items and all(i.subject == event.subject for i in event.items)
