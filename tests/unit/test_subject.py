"""The subject aggregate: the ordering, observation, ownership and tombstone rule, held once
(the fake store and verify's rebuild go through it; PostgreSQL's guard is checked against the
fake in tests/integration/contract)."""

from __future__ import annotations

import itertools

import pytest

from service.config import load_catalog
from service.domain.deliveries import ItemOwnedElsewhere
from service.domain.events import ItemStatus, ItemUpdate
from service.domain.resolution import SubjectState, resolve
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
    assert subject.apply(update(ItemStatus.CANCELED, T + 10)).fresh
    step = subject.apply(update(ItemStatus.ACTIVE, T))
    assert not step.fresh and step.observed
    assert (step.item.status, step.item.ever_active) == (ItemStatus.CANCELED, True)
    assert subject.apply(update(ItemStatus.CANCELED, T + 10)).fresh is False  # equal: no change


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


def test_a_write_the_store_refuses_is_an_observation_or_another_subjects_item() -> None:
    subject = Subject("user_a")
    subject.apply(update(ItemStatus.PAST_DUE, T))
    step = subject.apply(update(ItemStatus.ACTIVE, T + 10))
    assert step.fresh and step.previous is not None
    stale = subject.refused(step)  # the store's guard said no: the held item stays
    assert not stale.fresh and stale.observed and stale.item.ever_active
    assert subject.item_states() == (stale.item,)
    assert stale.item.status is ItemStatus.PAST_DUE
    new = subject.apply(update(ItemStatus.ACTIVE, T, item="subi_2"))
    with pytest.raises(ItemOwnedElsewhere, match="subi_2"):
        subject.refused(new)
    assert [i.item_id for i in subject.item_states()] == ["subi_1"]


def test_a_change_is_a_visible_write_or_an_observation_that_changes_the_answer() -> None:
    catalog = load_catalog(None)
    subject = Subject("user_a")
    state = SubjectState("user_a")
    before = resolve(state, catalog, T)
    steps = [subject.apply(update(ItemStatus.ACTIVE, T))]
    after = resolve(subject.applied_to(state), catalog, T)
    assert subject.changed_by(steps, before, after)
    subject.mark_deleted(T + 1)  # a write older than the deletion is not seen
    assert not subject.changed_by(steps, before, after)
    observed = [subject.apply(update(ItemStatus.ACTIVE, T - 5, "e"))]
    assert observed[0].observed is False and not subject.changed_by(observed, after, after)
    assert not subject.changed_by([], before, after)
