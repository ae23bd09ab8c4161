"""`entitlements status` reads unknown plans back from the notes deliveries were stored with:
every note unknown_plan_notes writes parses back to its slug and id (odd slugs too), and the
sightings count deliveries and name the latest one."""

from __future__ import annotations

import json

import pytest

from service.config import load_catalog
from service.domain.events import normalize_event
from service.domain.unknown_plans import NotedDelivery, parse_note, sightings, unknown_plan_notes
from tests.support import event

pytestmark = pytest.mark.unit

T = 1_790_000_000_000
CATALOG = load_catalog(None)


@pytest.mark.parametrize("slug", ["pro_2027", 'it\'s "odd"', "ünï ✓", "back\\slash", ""])
@pytest.mark.parametrize("held_back", [False, True])
def test_every_note_parses_back_to_its_slug_and_id(slug: str, held_back: bool) -> None:
    payload = event("item_active_pro_month", at_ms=T, subject="user_a", plan_slug=slug)
    payload["data"]["plan_id"] = payload["data"]["plan"]["id"] = "cplan_'x'"
    normalized = normalize_event(json.dumps(payload).encode(), "", T, T)
    (note,) = unknown_plan_notes(normalized, CATALOG, held_back)
    assert parse_note(note) == (slug, "cplan_'x'")


def test_other_notes_are_not_sightings_and_a_cut_note_still_names_its_slug() -> None:
    assert parse_note("payload had no timestamp") is None
    assert parse_note("unknown plan slug 'pro_20") == ("'pro_20", "")


def test_sightings_count_deliveries_and_name_the_latest() -> None:
    a = "unknown plan slug 'a' (id 'cplan_a') mapped to default plan 'free'"
    b = "unknown plan slug 'b' (id 'cplan_b') mapped to default plan 'free'"
    found = sightings(
        [
            NotedDelivery("evt_3", "user_3", T + 3, (a,)),
            NotedDelivery("evt_1", "user_1", T + 1, ("other", a, b)),
            NotedDelivery("evt_2", None, T + 2, (a, a)),  # one delivery counts once
        ]
    )
    assert [(s.slug, s.plan_id, s.deliveries) for s in found] == [
        ("a", "cplan_a", 3),
        ("b", "cplan_b", 1),
    ]
    assert (found[0].first_seen_ms, found[0].last_seen_ms) == (T + 1, T + 3)
    assert (found[0].example_subject, found[0].example_event_id, found[0].note) == (
        "user_3",
        "evt_3",
        a,
    )
    assert sightings([]) == []
