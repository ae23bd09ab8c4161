"""The subject aggregate: the ordering, observation, ownership and tombstone rule, held once
(the fake store and verify's rebuild go through it; PostgreSQL's guard is checked against the
fake in tests/integration/contract)."""

from __future__ import annotations

import itertools

import pytest

from service.domain.events import ItemStatus, ItemUpdate
from service.domain.subject import Subject, Subjects

pytestmark = pytest.mark.unit

T = 1_790_000_000_000


def update(status: ItemStatus, at: int, digest: str = "d", item: str = "subi_1") -> ItemUpdate:
    return ItemUpdate(item, "user_a", status, "pro", "cplan", T + 30 * 86_400_000, None, True,
                      at, digest)  # fmt: skip


def test_any_arrival_order_ends_in_the_same_subject() -> None:
    updates = [
        update(ItemStatus.ACTIVE, T),
        update(ItemStatus.PAST_DUE, T + 10),
        update(ItemStatus.CANCELED, T + 10),  # same time, later in the lifecycle
        update(ItemStatus.ACTIVE, T + 5, "e"),
    ]
    ends = set()
    for order in itertools.permutations(updates):
        subject = Subject("user_a")
        for u in order:
            subject.apply(u)
        ends.add(subject.item_states())
    assert len(ends) == 1
    (state,) = ends.pop()
    assert (state.status, state.event_ms, state.ever_active) == (ItemStatus.CANCELED, T + 10, True)


def test_an_older_update_only_counts_as_an_observation() -> None:
    subject = Subject("user_a")
    assert subject.apply(update(ItemStatus.CANCELED, T + 10))[1]
    state, won = subject.apply(update(ItemStatus.ACTIVE, T))
    assert not won
    assert (state.status, state.ever_active) == (ItemStatus.CANCELED, True)
    assert subject.apply(update(ItemStatus.CANCELED, T + 10))[1] is False  # equal: no change


def test_an_item_stays_with_its_first_subject() -> None:
    subjects = Subjects()
    assert subjects.apply("user_a", [update(ItemStatus.ACTIVE, T)])
    other = update(ItemStatus.ACTIVE, T + 1, item="subi_2")
    assert not subjects.apply("user_b", [other, update(ItemStatus.ENDED, T + 1)])  # all or none
    held = subjects.get("user_a")
    assert held is not None and held.item_states()[0].status is ItemStatus.ACTIVE
    assert subjects.get("user_b") is None and subjects.owner("subi_1") == "user_a"
    assert subjects.owner("subi_2") is None


def test_a_deletion_only_moves_later() -> None:
    subject = Subject("user_a")
    assert [subject.mark_deleted(at) for at in (T, T - 1, T, T + 1)] == [True, False, False, True]
    assert subject.deleted_at_ms == T + 1
