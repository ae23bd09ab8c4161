"""One repository contract, two stores: every case runs on the in-memory fake the unit tests use
and on PostgreSQL, through `Transactions.run` and the readers. PostgreSQL is the truth; a fake
that drifts from it (its ordering guard, ownership rule, tombstones, versions, rollback) fails
here. Deliveries and the usage repository: test_deliveries.py and test_usage.py here."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
import pytest

from service.application.ports import UnitOfWork
from service.domain.catalog import LimitValue
from service.domain.events import ItemStatus
from service.domain.past_due import PastDueTrack
from service.domain.resolution import Grant, ItemState, Override, SubjectState
from service.domain.subject import Subject
from tests.support.contract import T0, Backend, S, delivery
from tests.support.fakes import UnknownSubject

pytestmark = pytest.mark.integration

DAY = 86_400_000
OTHER = "user_other"


def item(
    item_id: str = "subi_1", status: ItemStatus = ItemStatus.ACTIVE, **kw: object
) -> ItemState:
    fields: dict[str, object] = {
        "plan_slug": "pro",
        "plan_id": "cplan_pro",
        "period_end_ms": T0 + 30 * DAY,
        "past_due_at_ms": None,
        "event_ms": 0,
        "period_start_ms": T0,
        **kw,
    }
    return ItemState(item_id, status, **fields)  # type: ignore[arg-type]


async def state(backend: Backend, subject: str = S) -> SubjectState:
    return (await backend.store.load_states([subject]))[subject]


async def put(
    backend: Backend, it: ItemState, order: tuple[int, int, str], subject: str = S
) -> bool:
    async def work(uow: UnitOfWork) -> bool:
        await uow.subjects.lock(subject)
        return await uow.subjects.put_item(subject, it, order, False, f"evt_{order}")

    return await backend.store.run(work)


# ---- subjects: ordering, ownership, observations, tombstones, versions -------------------


async def test_a_newer_order_wins_and_an_older_or_equal_one_changes_nothing(
    backend: Backend,
) -> None:
    first = item(plan_slug="pro")
    assert await put(backend, first, (T0, 2, "b"))
    assert [i.plan_slug for i in (await state(backend)).items] == ["pro"]
    assert (await state(backend)).items[0].event_ms == T0  # the order's time is the item's

    losing = [(T0 - 1, 9, "z"), (T0, 1, "z"), (T0, 2, "a"), (T0, 2, "b")]  # older, or equal
    for order in losing:
        assert not await put(backend, item(plan_slug="lost", ever_active=True), order), order
    after = (await state(backend)).items
    assert [(i.plan_slug, i.ever_active, i.event_ms) for i in after] == [("pro", False, T0)]

    winning = [(T0, 2, "c"), (T0, 3, "a"), (T0 + 1, 0, "a")]  # digest, then rank, then time
    for n, order in enumerate(winning):
        assert await put(backend, item(plan_slug=f"v{n}"), order), order
        assert [i.plan_slug for i in (await state(backend)).items] == [f"v{n}"]


async def test_ever_active_only_grows_and_every_column_round_trips(backend: Backend) -> None:
    track = PastDueTrack((T0 - DAY, 2), ((T0 - 10, T0 - 20),))
    full = item(
        status=ItemStatus.PAST_DUE,
        plan_id="cplan_x",
        past_due_at_ms=T0 - 20,
        ever_active=True,
        past_due=track,
        free_trial=True,
    )
    assert await put(backend, full, (T0, 3, "a"))
    assert (await state(backend)).items == (replace(full, event_ms=T0),)
    assert await put(backend, item(status=ItemStatus.CANCELED, ever_active=False), (T0 + 1, 4, "a"))
    (now,) = (await state(backend)).items
    assert (now.status, now.ever_active, now.free_trial) == (ItemStatus.CANCELED, True, False)


async def test_an_item_stays_with_the_subject_that_first_held_it(backend: Backend) -> None:
    assert await put(backend, item(plan_slug="pro"), (T0, 2, "a"))
    assert not await put(backend, item(plan_slug="stolen"), (T0 + DAY, 2, "a"), subject=OTHER)
    states = await backend.store.load_states([S, OTHER])
    assert [i.plan_slug for i in states[S].items] == ["pro"]
    assert states[OTHER].items == ()


async def test_observe_keeps_what_an_older_event_tells_on_the_owners_item_only(
    backend: Backend,
) -> None:
    assert await put(backend, item(), (T0, 2, "a"))
    track = PastDueTrack(None, ((T0 - 5, T0 - 7),))
    seen = item(ever_active=True, past_due=track, past_due_at_ms=T0 - 7, plan_slug="ignored")

    async def observe(uow: UnitOfWork) -> None:
        await uow.subjects.observe(OTHER, replace(seen, ever_active=False))  # not its item
        await uow.subjects.observe(S, replace(seen, item_id="subi_unknown"))  # no such item
        await uow.subjects.observe(S, seen)

    await backend.store.run(observe)
    (kept,) = (await state(backend)).items
    assert (kept.plan_slug, kept.ever_active, kept.past_due, kept.past_due_at_ms) == (
        "pro", True, track, T0 - 7,
    )  # fmt: skip


async def test_a_later_deletion_wins(backend: Backend) -> None:
    async def marks(uow: UnitOfWork) -> list[bool]:
        unknown = await uow.subjects.mark_deleted("user_never_seen", T0)  # no subject row
        await uow.subjects.lock(S)
        before = await uow.subjects.is_deleted(S)
        done = [await uow.subjects.mark_deleted(S, at) for at in (T0, T0 - 1, T0, T0 + 5)]
        return [unknown, before, *done, await uow.subjects.is_deleted(S)]

    assert await backend.store.run(marks) == [False, False, True, False, False, True, True]
    assert (await state(backend)).deleted_at_ms == T0 + 5
    assert (await state(backend, "user_never_seen")).deleted_at_ms is None


async def test_load_gives_the_state_and_the_aggregate_with_the_orders_that_wrote_it(
    backend: Backend,
) -> None:
    grant = Grant("pro", T0, T0 + DAY)
    override = Override("ovr_1", "sso", None, T0 + 6, True)

    async def work(uow: UnitOfWork) -> list[Subject]:
        await uow.subjects.lock(S)
        await uow.subjects.put_item(S, item("subi_a"), (T0, 2, "a"), True, "evt_a")
        await uow.subjects.put_item(S, item("subi_b"), (T0 + 1, 3, "b"), False, "evt_b")
        await uow.subjects.mark_deleted(S, T0 + 5)
        await uow.grants.add("grt_1", S, grant, "support")
        await uow.overrides.add(S, override)
        await uow.subjects.commit_change(S, "free_user", "free_user", "evt_x", "t", [])
        return [await uow.subjects.load(S), await uow.subjects.load("user_unknown")]

    aggregate, unknown = await backend.store.run(work)
    got = aggregate.state()
    assert got == (await state(backend)) and got.deleted_at_ms == aggregate.deleted_at_ms == T0 + 5
    assert (got.grants, got.overrides, aggregate.overrides) == (
        (grant,),
        (override,),
        {"ovr_1": override},
    )
    assert got.version == 1
    assert len(got.items) == 2
    held = {i: (h.order, h.is_default, h.event_id) for i, h in aggregate.items.items()}
    assert held == {
        "subi_a": ((T0, 2, "a"), True, "evt_a"),
        "subi_b": ((T0 + 1, 3, "b"), False, "evt_b"),
    }
    assert unknown == Subject("user_unknown")
    assert unknown.state() == SubjectState("user_unknown")


async def test_commit_change_numbers_logs_and_applies(backend: Backend) -> None:
    d, e = delivery("evt_c")

    async def commits(uow: UnitOfWork) -> list[int]:
        await uow.deliveries.add(d, e, True)
        await uow.subjects.lock(OTHER)
        return [
            await uow.subjects.commit_change(S, "pro", "free_user", "evt_c", "t", ["n1"]),
            await uow.subjects.commit_change(OTHER, "free_user", "free_user", "evt_x", "t", []),
            await uow.subjects.commit_change(S, "pro", "pro", "evt_c", "t", ["n2"]),
        ]

    assert await backend.store.run(commits) == [1, 2, 3]
    assert await backend.probe.change_log() == [(1, S), (2, OTHER), (3, S)]
    assert await backend.probe.plan_changes() == [(S, "free_user", "pro", 1, "evt_c")]
    assert await backend.probe.delivery("evt_c") == ("APPLIED", ["n2"], S)
    states = await backend.store.load_states([S, OTHER, S])
    assert (states[S].version, states[OTHER].version) == (3, 2)

    async def next_one(uow: UnitOfWork) -> int:
        return await uow.subjects.commit_change(S, "pro", "pro", "evt_c", "t", [])

    assert await backend.store.run(next_one) == 4


async def test_states_hold_items_grants_and_overrides(backend: Backend) -> None:
    grant = Grant("pro", T0, T0 + DAY)
    override = Override("ovr_1", None, "api_calls", T0, False, LimitValue(7), T0 + DAY, "deal")
    unlimited = Override("ovr_2", None, "seats", T0, False, LimitValue(unlimited=True))
    feature = Override("ovr_3", "sso", None, T0, True, None, None, "")

    async def work(uow: UnitOfWork) -> dict[str, SubjectState]:
        await uow.subjects.lock(S)
        await uow.subjects.put_item(S, item("subi_a"), (T0, 2, "a"), True, "evt_a")
        await uow.subjects.put_item(S, item("subi_b", plan_slug="x"), (T0, 2, "a"), False, "e")
        await uow.grants.add("grt_1", S, grant, "support")
        for o in (override, unlimited, feature):
            await uow.overrides.add(S, o)
        return await uow.subjects.states([S, "user_unknown"])

    inside = await backend.store.run(work)
    outside = await backend.store.load_states([S, "user_unknown"])
    for states in (inside, outside):
        assert states["user_unknown"] == SubjectState("user_unknown", (), (), None, 0)
        got = states[S]
        assert sorted(i.item_id for i in got.items) == ["subi_a", "subi_b"]
        assert got.grants == (grant,)
        assert sorted(got.overrides, key=lambda o: o.override_id) == [override, unlimited, feature]
        assert (got.deleted_at_ms, got.version) == (None, 0)


# ---- grants and overrides --------------------------------------------------------------


async def test_a_grant_is_revoked_once(backend: Backend) -> None:
    async def work(uow: UnitOfWork) -> list[object]:
        await uow.subjects.lock(S)
        await uow.grants.add("grt_1", S, Grant("pro", T0), "support")
        return [
            await uow.grants.active_subject("grt_1"),
            await uow.grants.revoke("grt_1", T0 + 1, "done"),
            await uow.grants.revoke("grt_1", T0 + 2, "again"),
            await uow.grants.revoke("grt_none", T0, "none"),
            await uow.grants.active_subject("grt_1"),
            await uow.grants.active_subject("grt_none"),
        ]

    assert await backend.store.run(work) == [S, True, False, False, None, None]
    assert (await state(backend)).grants == ()


async def test_an_override_is_removed_once(backend: Backend) -> None:
    override = Override("ovr_1", "sso", None, T0, True)

    async def work(uow: UnitOfWork) -> list[object]:
        await uow.subjects.lock(S)
        await uow.overrides.add(S, override)
        return [
            await uow.overrides.active_subject("ovr_1"),
            await uow.overrides.remove("ovr_1", T0 + 1, "done"),
            await uow.overrides.remove("ovr_1", T0 + 2, "again"),
            await uow.overrides.remove("ovr_none", T0, "none"),
            await uow.overrides.active_subject("ovr_1"),
        ]

    assert await backend.store.run(work) == [S, True, False, False, None]
    assert (await state(backend)).overrides == ()


async def test_rows_of_a_subject_never_locked_are_refused(backend: Backend) -> None:
    """Items, grants and overrides belong to a subject row: the use cases lock it first."""
    writes = [
        lambda uow: uow.subjects.put_item(S, item(), (T0, 2, "a"), False, "evt"),
        lambda uow: uow.grants.add("grt_u", S, Grant("pro", T0), "r"),
        lambda uow: uow.overrides.add(S, Override("ovr_u", "sso", None, T0, True)),
    ]
    for write in writes:
        with pytest.raises((UnknownSubject, asyncpg.ForeignKeyViolationError)):
            await backend.store.run(write)
    assert await state(backend) == SubjectState(S, (), (), None, 0)


# ---- all or nothing ----------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_work_that_raises_leaves_nothing_behind(backend: Backend) -> None:
    d, e = delivery("evt_rb")

    async def doomed(uow: UnitOfWork) -> None:
        await uow.deliveries.add(d, e, True)
        await uow.subjects.put_item(S, item(), (T0, 2, "a"), False, "evt_rb")
        await uow.subjects.mark_deleted(S, T0)
        await uow.subjects.commit_change(S, "pro", "free_user", "evt_rb", "t", [])
        await uow.grants.add("grt_rb", S, Grant("pro", T0), "r")
        await uow.overrides.add(S, Override("ovr_rb", "sso", None, T0, True))
        raise Boom

    with pytest.raises(Boom):
        await backend.store.run(doomed)
    assert await state(backend) == SubjectState(S, (), (), None, 0)
    assert await backend.probe.change_log() == []
    assert await backend.probe.plan_changes() == []
    assert await backend.probe.delivery("evt_rb") is None

    async def after(uow: UnitOfWork) -> tuple[object, ...]:
        return (
            await uow.deliveries.get("evt_rb"),
            await uow.grants.active_subject("grt_rb"),
            await uow.overrides.active_subject("ovr_rb"),
            await uow.deliveries.add(d, e, True),  # the id is free again
        )

    assert await backend.store.run(after) == (None, None, None, True)
