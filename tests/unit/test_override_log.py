"""Overrides rebuilt from their log (service/domain/override_log.py), as `verify` does."""

from __future__ import annotations

import pytest

from service.domain.override_log import OverrideEvent, override_differences, rebuilt_overrides

pytestmark = pytest.mark.unit

T = 1_790_000_000_000


def set_limit(override_id: str, value: int, at: int = T) -> OverrideEvent:
    return OverrideEvent(
        override_id, "set", "deal", at, "user_a", None, "maxHabits", False, value, False, None
    )


def test_a_remove_ends_only_an_override_set_before_and_only_once() -> None:
    rows = rebuilt_overrides(
        [
            OverrideEvent("ovr_ghost", "remove", "no such", T),  # nothing to remove: nothing
            set_limit("ovr_1", 5),
            OverrideEvent("ovr_1", "remove", "first", T + 1),
            OverrideEvent("ovr_1", "remove", "second", T + 2),  # already removed: the first holds
        ]
    )
    assert rows == {
        "ovr_1": ("user_a", None, "maxHabits", False, 5, False, "deal", T, None, T + 1, "first")
    }


def test_differences_name_the_override_the_subject_and_the_column() -> None:
    rebuilt = rebuilt_overrides([set_limit("ovr_1", 5), set_limit("ovr_2", 7)])
    live = {"ovr_1": (*rebuilt["ovr_1"][:4], 999, *rebuilt["ovr_1"][5:]), "ovr_3": rebuilt["ovr_2"]}
    assert override_differences(live, rebuilt) == [
        ("user_a", "override ovr_1: limit_value live 999, rebuilt 5"),
        ("user_a", "override ovr_2: in the log but missing from the live state"),
        ("user_a", "override ovr_3: in the live state but no logged set produces it"),
    ]
    assert override_differences(rebuilt, rebuilt) == []
