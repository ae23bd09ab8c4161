"""The usage repository's contract on both stores (see test_repositories.py): counters made
with their period and locked, prior answers by idempotency key, calls saved in order, and
reservations that count only while held and live."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.application.ports import UnitOfWork
from service.domain.consumption import Recorded
from service.domain.usage import Answer, Counter, Kind, Period, Reservation
from tests.support.contract import Backend

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000
MONTH = Period(T0 - 1000, T0 + 30 * 86_400_000)
LATER = Period(T0, T0 + 60_000)
S, M = "user_usage", "api_calls"


def answer(used: int, allowed: bool = True, **kw: object) -> Answer:
    return Answer(allowed, used, 100 - used, False, 100, MONTH, **kw)  # type: ignore[arg-type]


def record(key: str, used: int, meter: str = M, kind: Kind = Kind.CONSUME) -> Recorded:
    return Recorded(S, meter, Counter(MONTH, used), kind, key, 1, answer(used))


async def test_lock_makes_the_counter_once_with_its_period(backend: Backend) -> None:
    async def first(uow: UnitOfWork) -> tuple[Counter, Answer | None]:
        return await uow.usage.lock(S, M, MONTH, T0, "k1")

    assert await backend.store.run(first) == (Counter(MONTH, 0, 0), None)

    async def again(uow: UnitOfWork) -> tuple[Counter, Answer | None]:
        return await uow.usage.lock(S, M, LATER, T0, None)  # the stored period is kept

    assert await backend.store.run(again) == (Counter(MONTH, 0, 0), None)
    assert await backend.store.counters(S, T0) == {M: Counter(MONTH, 0, 0)}
    assert await backend.store.counters("user_none", T0) == {}


async def test_a_saved_call_is_the_prior_answer_of_its_key(backend: Backend) -> None:
    async def save(uow: UnitOfWork) -> None:
        counter, _ = await uow.usage.lock(S, M, MONTH, T0, "k1")
        after = replace(counter, used=5)
        await uow.usage.save(S, M, after, Kind.CONSUME, "k1", 5, answer(5), T0)

    await backend.store.run(save)

    async def retry(uow: UnitOfWork) -> list[tuple[Counter, Answer | None]]:
        return [
            await uow.usage.lock(S, M, MONTH, T0, "k1"),
            await uow.usage.lock(S, M, MONTH, T0, "k2"),
            await uow.usage.lock(S, M, MONTH, T0, None),
            await uow.usage.lock(S, "other_meter", MONTH, T0, "k1"),
        ]

    assert await backend.store.run(retry) == [
        (Counter(MONTH, 5), answer(5)),
        (Counter(MONTH, 5), None),
        (Counter(MONTH, 5), None),
        (Counter(MONTH, 0), None),
    ]
    assert await backend.probe.usage_keys(S, M) == ["k1"]


async def test_save_many_keeps_the_order_and_the_last_counter(backend: Backend) -> None:
    other = "storage_gb"
    records = [record("a", 1), record("b", 2, other), record("c", 3), record("d", 4)]

    async def batch(uow: UnitOfWork) -> None:
        await uow.usage.lock_many([(S, M, MONTH), (S, other, MONTH)], [], T0)
        await uow.usage.save_many(records, T0)

    await backend.store.run(batch)
    assert await backend.store.counters(S, T0) == {M: Counter(MONTH, 4), other: Counter(MONTH, 2)}
    assert await backend.probe.usage_keys(S, M) == ["a", "c", "d"]

    async def priors(
        uow: UnitOfWork,
    ) -> tuple[dict[tuple[str, str], Counter], list[Answer | None]]:
        return await uow.usage.lock_many(
            [(S, other, MONTH), (S, M, MONTH)],
            [(S, M, "c"), (S, other, "b"), (S, M, "zz"), (S, other, "a")],
            T0,
        )

    counters, answers = await backend.store.run(priors)
    assert counters == {(S, M): Counter(MONTH, 4), (S, other): Counter(MONTH, 2)}
    assert answers == [answer(3), answer(2), None, None]


async def test_a_reservation_counts_while_held_and_live(backend: Backend) -> None:
    held = Reservation("rsv_1", S, M, 7, T0 + 1000)
    expired = Reservation("rsv_2", S, M, 50, T0 - 1)
    reserve_answer = answer(0, reservation_id="rsv_1", expires_at_ms=T0 + 1000)

    async def hold(uow: UnitOfWork) -> None:
        counter, _ = await uow.usage.lock(S, M, MONTH, T0, "r1")
        await uow.usage.hold(held)
        await uow.usage.hold(expired)
        await uow.usage.save(S, M, counter, Kind.RESERVE, "r1", 7, reserve_answer, T0)

    await backend.store.run(hold)
    assert await backend.store.counters(S, T0) == {M: Counter(MONTH, 0, 7)}
    assert await backend.store.counters(S, T0 + 1000) == {M: Counter(MONTH, 0, 0)}

    async def look(uow: UnitOfWork) -> list[object]:
        return [
            await uow.usage.reservation("rsv_1"),
            await uow.usage.reservation("rsv_none"),
            await uow.usage.lock(S, M, MONTH, T0, "r1"),  # a retried Reserve: the same answer
            await uow.usage.lock_many([(S, M, MONTH)], [(S, M, "r1")], T0 + 999),
            await uow.usage.lock_many([(S, M, MONTH)], [], T0),  # no call: still what is held
        ]

    assert await backend.store.run(look) == [
        held,
        None,
        (Counter(MONTH, 0, 7), reserve_answer),
        ({(S, M): Counter(MONTH, 0, 7)}, [reserve_answer]),
        ({(S, M): Counter(MONTH, 0, 7)}, []),
    ]

    async def finish(uow: UnitOfWork) -> tuple[Reservation | None, Reservation | None]:
        await uow.usage.finish("rsv_1", 3)
        await uow.usage.finish("rsv_1", None)  # already finished: stays committed
        return await uow.usage.reservation("rsv_1"), await uow.usage.reservation("rsv_2")

    assert await backend.store.run(finish) == (replace(held, held=False), expired)
    assert await backend.store.counters(S, T0) == {M: Counter(MONTH, 0, 0)}


async def test_usage_work_that_raises_leaves_nothing_behind(backend: Backend) -> None:
    class Boom(Exception):
        pass

    async def doomed(uow: UnitOfWork) -> None:
        counter, _ = await uow.usage.lock(S, M, MONTH, T0, "k")
        await uow.usage.hold(Reservation("rsv_rb", S, M, 1, T0 + 1000))
        await uow.usage.save(S, M, replace(counter, used=9), Kind.CONSUME, "k", 9, answer(9), T0)
        raise Boom

    with pytest.raises(Boom):
        await backend.store.run(doomed)
    assert await backend.store.counters(S, T0) == {}
    assert await backend.probe.usage_keys(S, M) == []

    async def after(uow: UnitOfWork) -> object:
        return await uow.usage.reservation("rsv_rb"), await uow.usage.lock(S, M, LATER, T0, "k")

    assert await backend.store.run(after) == (None, (Counter(LATER, 0, 0), None))
