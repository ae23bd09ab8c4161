"""The in-memory rebuild `verify` compares the live state with (pure, plain values)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.config import load_catalog
from service.domain.events import normalize_event
from service.domain.rebuild import Rebuild
from service.domain.resolution import Grant, resolve
from tests.support import event

pytestmark = pytest.mark.unit

T = 1_790_000_000_000
CATALOG = load_catalog(None)


def apply(rebuild: Rebuild, payload: dict[str, Any]) -> None:
    rebuild.apply(normalize_event(json.dumps(payload).encode(), "", T, T))


def test_order_does_not_matter_and_older_events_still_count() -> None:
    active = event("item_active_lifetime", at_ms=T - 1000, subject="user_a")
    ended = event("item_ended_pro", at_ms=T, subject="user_a")
    ended["data"]["id"] = active["data"]["id"]
    ended["data"]["plan"]["slug"] = "lifetime"
    one, two = Rebuild(), Rebuild()
    for payload in (active, ended):
        apply(one, payload)
    for payload in (ended, active):
        apply(two, payload)
    assert one.item_rows() == two.item_rows()
    (row,) = one.item_rows().values()
    assert row[2] == "ended" and row[8] is True  # status ended, ever active
    assert resolve(one.states()["user_a"], CATALOG, T).plan.name == "lifetime"


def test_an_item_stays_with_its_first_subject_and_deletions_only_grow() -> None:
    rebuild = Rebuild()
    first = event("item_active_pro_month", at_ms=T - 5000, subject="user_a")
    moved = event("item_active_pro_month", at_ms=T, subject="user_b")
    moved["data"]["id"] = first["data"]["id"]
    apply(rebuild, first)
    apply(rebuild, moved)
    assert [row[1] for row in rebuild.item_rows().values()] == ["user_a"]
    assert "user_b" not in rebuild.subject_rows()
    for at in (T, T - 10_000):
        deleted = event("user_deleted", at_ms=at, subject="user_a", timestamp_ms=at)
        deleted["data"]["id"] = "user_a"
        apply(rebuild, deleted)
    assert rebuild.subject_rows()["user_a"] == T
    rebuild.add_grant("user_c", Grant("pro", T - 1, None))
    assert resolve(rebuild.states()["user_c"], CATALOG, T).plan.name == "pro"
