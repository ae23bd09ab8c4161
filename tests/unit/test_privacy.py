"""Scrubbing personal data from payloads keeps what decides entitlements."""

from __future__ import annotations

import json

import pytest

from service.domain.events import normalize_event
from service.domain.privacy import SCRUBBED, scrub_payload
from tests.support import load_fixture

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "fixture",
    ["item_active_pro_month", "user_created", "subscription_created_free", "payment_attempt_paid"],
)
def test_personal_fields_are_gone_and_the_event_means_the_same(fixture: str) -> None:
    raw = json.dumps(load_fixture(fixture)).encode()
    scrubbed = scrub_payload(raw)
    for personal in (b"ada@example.com", b"Ada", b"Lovelace", b"img.clerk.com"):
        assert personal not in scrubbed
    assert SCRUBBED.encode() in scrubbed
    before, after = normalize_event(raw, "", 1), normalize_event(scrubbed, "", 1)
    assert (before.kind, before.subject, before.items) == (after.kind, after.subject, after.items)


def test_plan_names_are_not_personal() -> None:
    scrubbed = json.loads(scrub_payload(json.dumps(load_fixture("item_active_pro_month")).encode()))
    assert scrubbed["data"]["plan"]["name"] == "Pro"


def test_unreadable_body_is_dropped_whole() -> None:
    assert scrub_payload(b"\xffnot json ada@example.com") == b""
