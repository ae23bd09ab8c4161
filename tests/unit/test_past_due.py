"""Grace anchored on the first sighting of a past-due episode, in any arrival order (SPEC §9)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import load_catalog
from service.domain.events import LIFECYCLE_RANK, ItemStatus, ItemUpdate
from service.domain.past_due import PastDueTrack
from service.domain.resolution import (
    EntitlementStatus,
    ItemState,
    SubjectState,
    item_after_stale,
    item_after_update,
    resolve,
)

pytestmark = pytest.mark.unit

CATALOG = load_catalog(None)
DAY = 86_400_000
T0 = 1_790_000_000_000

Observation = tuple[int, ItemStatus, int | None]  # (event_ms, status, explicit past_due_at)

OBSERVATIONS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=20).map(lambda n: T0 + n * 3_600_000),
        st.sampled_from(
            [ItemStatus.PAST_DUE, ItemStatus.PAST_DUE, ItemStatus.ACTIVE, ItemStatus.ENDED]
        ),
        st.one_of(st.none(), st.integers(min_value=0, max_value=20).map(lambda n: T0 + n)),
    ),
    min_size=1,
    max_size=12,
)


def _update(obs: Observation, digest: str = "d") -> ItemUpdate:
    event_ms, status, explicit = obs
    return ItemUpdate(
        "item_1", "user_1", status, "pro", None, None, explicit, False, event_ms, digest
    )


def _store(observations: list[Observation]) -> ItemState:
    """What the store keeps after the observations arrive in this order (ordering guard)."""
    stored: ItemState | None = None
    key: tuple[int, int, str] = (0, 0, "")
    for obs in observations:
        update = _update(obs, digest=repr(obs))  # content-based, as the real digest
        if stored is None or update.order_key > key:
            stored = item_after_update(stored, update)
            key = update.order_key
        else:
            stored = item_after_stale(stored, update)
    assert stored is not None
    return stored


def _in_order_anchor(observations: list[Observation]) -> int | None:
    """Plain rule, events in (time, lifecycle) order: an episode starts at the first past-due
    event after a non-past-due one; its anchor is the earliest past_due_at it saw."""
    anchor: int | None = None
    for event_ms, status, explicit in sorted(
        observations, key=lambda o: (o[0], LIFECYCLE_RANK[o[1]])
    ):
        if status is not ItemStatus.PAST_DUE:
            anchor = None
            continue
        seen = explicit if explicit is not None else event_ms
        anchor = seen if anchor is None else min(anchor, seen)
    return anchor


@given(OBSERVATIONS, st.randoms(use_true_random=False))
def test_the_track_does_not_depend_on_arrival_order(
    observations: list[Observation], rnd: object
) -> None:
    shuffled = list(observations)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = _store(observations), _store(shuffled)
    assert a.past_due == b.past_due
    if a.status is ItemStatus.PAST_DUE:
        assert a.past_due_at_ms == b.past_due_at_ms == _in_order_anchor(observations)


def test_relisting_a_past_due_item_never_restarts_grace() -> None:
    first = (T0, ItemStatus.PAST_DUE, None)  # Clerk's item shape: no past_due_at
    relisted = [(T0 + n * DAY, ItemStatus.PAST_DUE, None) for n in range(1, 5)]
    stored = _store([first, *relisted])
    assert stored.past_due_at_ms == T0
    state = SubjectState("user_1", (stored,))
    assert resolve(state, CATALOG, T0 + 2 * DAY).status is EntitlementStatus.PAST_DUE
    assert resolve(state, CATALOG, T0 + 4 * DAY).plan.name == "free"  # 3-day grace is over


def test_a_payment_ends_the_episode_and_a_later_failure_starts_a_new_one() -> None:
    stored = _store(
        [
            (T0, ItemStatus.PAST_DUE, None),
            (T0 + DAY, ItemStatus.ACTIVE, None),
            (T0 + 10 * DAY, ItemStatus.PAST_DUE, None),
            (T0 + 11 * DAY, ItemStatus.PAST_DUE, None),
        ]
    )
    assert stored.past_due_at_ms == T0 + 10 * DAY


def test_subscription_past_due_at_is_used_when_the_item_has_none() -> None:
    stored = _store([(T0 + DAY, ItemStatus.PAST_DUE, T0)])
    assert stored.past_due_at_ms == T0


def test_flat_form_round_trips() -> None:
    track = PastDueTrack((T0, 1), ((T0 + 5, T0), (T0 + 9, T0 + 1)))
    assert PastDueTrack.from_flat(T0, 1, track.flat()) == track
