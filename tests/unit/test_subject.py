"""The subject aggregate: the ordering, observation, ownership and tombstone rule, held once
(the fake store and verify's rebuild go through it; PostgreSQL's guard is checked against the
fake in tests/integration/contract)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from service.config import load_catalog
from service.domain.catalog import LimitValue
from service.domain.deliveries import ItemOwnedElsewhere
from service.domain.events import ItemStatus, ItemUpdate
from service.domain.resolution import EntitlementStatus, Grant, Override, SubjectState, resolve
from service.domain.subject import Subject, Subjects
from service.domain.usage import Period, month_of

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
    before = subject.entitlements(catalog, T)
    assert before == resolve(SubjectState("user_a"), catalog, T)
    steps = [subject.apply(update(ItemStatus.ACTIVE, T))]
    after = subject.entitlements(catalog, T)
    assert after.plan.name == "pro"
    assert subject.changed_by(steps, before, after)
    subject.mark_deleted(T + 1)  # a write older than the deletion is not seen
    assert not subject.changed_by(steps, before, after)
    observed = [subject.apply(update(ItemStatus.ACTIVE, T - 5, "e"))]
    assert observed[0].observed is False and not subject.changed_by(observed, after, after)
    assert not subject.changed_by([], before, after)


def test_an_override_is_placed_at_its_instant_and_the_newest_of_a_feature_wins() -> None:
    catalog = load_catalog(None)
    subject = Subject("user_a")
    subject.apply(update(ItemStatus.ACTIVE, T))
    assert "dataExport" in subject.entitlements(catalog, T).features
    off = subject.set_override(Override("ovr_off", "dataExport", None, 0, False), T + 1)
    assert off.created_at_ms == T + 1 and subject.overrides == {"ovr_off": off}
    assert "dataExport" not in subject.entitlements(catalog, T + 1).features
    on = subject.set_override(Override("ovr_on", "dataExport", None, 0, True), T + 2)
    assert list(subject.overrides) == ["ovr_off", "ovr_on"]  # the older one stays, shadowed
    assert subject.entitlements(catalog, T + 2).feature_overrides == {"dataExport": True}
    assert subject.state().overrides == (off, on)


def test_an_override_is_removed_once_and_only_where_it_is_held() -> None:
    catalog = load_catalog(None)
    subject = Subject("user_a")
    cap = Override("ovr_cap", None, "maxHabits", 0, value=LimitValue(2), expires_at_ms=T + 10)
    placed = subject.set_override(cap, T)
    assert subject.entitlements(catalog, T).limits["maxHabits"] == LimitValue(2)
    assert subject.entitlements(catalog, T).valid_until_ms == T + 10  # it expires then
    assert subject.entitlements(catalog, T + 10).limits["maxHabits"] == LimitValue(10)
    assert Subject("user_b").remove_override("ovr_cap") is None  # another subject's
    assert subject.remove_override("ovr_cap") == placed
    assert subject.remove_override("ovr_cap") is None  # removed already: nothing changes
    assert subject.entitlements(catalog, T).limits["maxHabits"] == LimitValue(10)


def test_entitlements_resolve_every_term_the_subject_holds() -> None:
    catalog = load_catalog(None)
    grace = catalog.past_due_grace_seconds * 1000
    subject = Subject("user_a", grants=(Grant("pro", T, T + 5),), version=7)
    subject.apply(update(ItemStatus.PAST_DUE, T))
    ent = subject.entitlements(catalog, T + 10)
    assert (ent.plan.name, ent.status, ent.version) == ("pro", EntitlementStatus.PAST_DUE, 7)
    assert ent.valid_until_ms == T + grace  # the grace ends then
    assert subject.entitlements(catalog, T + grace).plan.name == "free"
    assert subject.entitlements(catalog, T + 1) == resolve(subject.state(), catalog, T + 1)


def test_usage_counts_in_the_entitling_items_billing_period() -> None:
    catalog = load_catalog(None)
    subject = Subject("user_a")
    meter = "aiInsightsPerMonth"  # reset: billing_period
    assert subject.usage_period(catalog, meter, T) == month_of(T)  # no paid item: the month
    start, end = T - 86_400_000, T + 30 * 86_400_000
    subject.apply(replace(update(ItemStatus.ACTIVE, T), period_start_ms=start))
    assert subject.usage_period(catalog, meter, T) == Period(start, end)
