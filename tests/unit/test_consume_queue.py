"""Group commit for Consume (domain/consumption.py, application/consume_queue.py): a batch
answers exactly what the same calls would answer one at a time, a key seen earlier in the batch
counts once, a caller that gave up is left out, and a failed transaction fails its whole batch
and stores nothing (the in-memory store; tests/integration/test_usage.py runs PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.application.consume_queue import ConsumeQueue
from service.domain.catalog import LimitValue
from service.domain.consumption import ConsumeCall, consume_in_order
from service.domain.errors import Unavailable
from service.domain.usage import Answer, Counter, Period
from tests.support import Clock
from tests.support.fakes import InMemoryStore

pytestmark = pytest.mark.unit

NOW = 1_767_225_600_000  # 2026-01-01
MONTH = Period(NOW, NOW + 31 * 86_400_000)
NEXT = Period(MONTH.end_ms or 0, (MONTH.end_ms or 0) + 28 * 86_400_000)

calls = st.lists(
    st.builds(
        ConsumeCall,
        subject=st.sampled_from(["user_a", "user_b"]),
        meter=st.sampled_from(["m1", "m2"]),
        amount=st.integers(min_value=1, max_value=9),
        key=st.sampled_from([f"k{i}" for i in range(12)]),
        limit=st.sampled_from(
            [LimitValue(0), LimitValue(10), LimitValue(25), LimitValue(0, unlimited=True)]
        ),
        period=st.sampled_from([MONTH, NEXT]),
    ),
    max_size=40,
)


def one_at_a_time(
    batch: list[ConsumeCall], stored: dict[tuple[str, str], Counter], now_ms: int
) -> list[tuple[Answer, bool]]:
    """The reference: each call in its own transaction, as Consume ran before batching."""
    counters = dict(stored)
    answers: dict[tuple[str, str, str], Answer] = {}
    out = []
    for call in batch:
        prior = answers.get((call.subject, call.meter, call.key))
        if prior is not None:
            out.append((prior, True))
            continue
        counter = counters.get((call.subject, call.meter), Counter(call.period))
        after, decision = counter.at(now_ms, call.period).consume(call.limit, call.amount)
        counters[(call.subject, call.meter)] = after
        answers[(call.subject, call.meter, call.key)] = Answer.of(
            after, call.limit, decision.allowed
        )
        out.append((answers[(call.subject, call.meter, call.key)], False))
    return out


@given(calls, st.sampled_from([NOW, MONTH.end_ms or 0]))
def test_a_batch_answers_what_the_calls_would_answer_one_at_a_time(
    batch: list[ConsumeCall], now_ms: int
) -> None:
    locked = {(c.subject, c.meter): Counter(MONTH, used=3) for c in batch}
    results, records = consume_in_order(batch, locked, [None] * len(batch), now_ms)
    assert results == one_at_a_time(batch, locked, now_ms)
    # One record per first use of a key, in arrival order; a limit is never passed.
    firsts = list(dict.fromkeys((c.subject, c.meter, c.key) for c in batch))
    assert [(r.subject, r.meter, r.key) for r in records] == firsts
    for r in records:
        assert r.answer.unlimited or r.counter.used <= r.answer.limit_value or r.amount == 0


def test_a_key_answered_before_the_batch_counts_nothing() -> None:
    call = ConsumeCall("user_a", "m1", 5, "k", LimitValue(10), MONTH)
    before = Answer(True, 5, 5, False, 10, MONTH)
    results, records = consume_in_order(
        [call, call], {("user_a", "m1"): Counter(MONTH, 5)}, [before, before], NOW
    )
    assert results == [(before, True), (before, True)] and records == []


def queue(store: InMemoryStore) -> ConsumeQueue:
    clock = Clock()
    clock.freeze(NOW)
    return ConsumeQueue(store, clock, batch=64, writers=2)


async def test_calls_waiting_together_share_few_transactions_and_stay_exact() -> None:
    store = InMemoryStore()
    q = queue(store)
    many = [ConsumeCall("user_a", "m1", 1, f"k{i}", LimitValue(50), MONTH) for i in range(200)]
    answers = await asyncio.gather(*(q.consume(c) for c in many + many))
    assert sum(1 for a, dup in answers if a.allowed and not dup) == 50
    assert sum(1 for _, dup in answers if dup) == 200  # every retry got the first answer
    assert store.units <= 8  # 400 calls, batches of at most 64, two writers
    assert store.data.usage.counters[("user_a", "m1")].used == 50


async def test_a_failed_transaction_fails_its_batch_and_stores_nothing() -> None:
    store = InMemoryStore()
    q = queue(store)
    store.fail_with = Unavailable("the database is unreachable")
    batch = [ConsumeCall("user_a", "m1", 1, f"k{i}", LimitValue(5), MONTH) for i in range(3)]
    outcomes = await asyncio.gather(*(q.consume(c) for c in batch), return_exceptions=True)
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert store.data.usage.counters == {} and store.data.usage.records == {}
    answer, duplicate = await q.consume(batch[0])  # the retry is counted, once
    assert (answer.allowed, answer.used, duplicate) == (True, 1, False)


async def test_a_caller_that_gave_up_before_its_batch_is_left_out() -> None:
    store = InMemoryStore()
    q = queue(store)
    gone = asyncio.ensure_future(
        q.consume(ConsumeCall("user_a", "m1", 3, "a", LimitValue(5), MONTH))
    )
    await asyncio.sleep(0)  # queued; its writer has not run yet
    gone.cancel()
    kept = await q.consume(ConsumeCall("user_a", "m1", 5, "b", LimitValue(5), MONTH))
    assert kept[0].allowed and kept[0].used == 5
    assert ("user_a", "m1", "a") not in store.data.usage.records


async def test_a_call_after_the_last_flusher_finished_is_never_stranded() -> None:
    # The flusher sets its last answer, then finds the queue empty and stops: the caller, woken
    # first, queues its next call before the flusher's task is done. It must get a flusher.
    store = InMemoryStore()
    clock = Clock()
    clock.freeze(NOW)
    q = ConsumeQueue(store, clock, writers=1)
    async with asyncio.timeout(5):  # awaited directly: wait_for's own task would hide it
        for i in range(20):
            answer, _ = await q.consume(
                ConsumeCall("user_a", "m1", 1, f"k{i}", LimitValue(50), MONTH)
            )
            assert answer.used == i + 1


def gathering(store: InMemoryStore, gather: float, batch: int = 64) -> ConsumeQueue:
    """Two flushers on one cadence (the default)."""
    clock = Clock()
    clock.freeze(NOW)
    return ConsumeQueue(store, clock, batch=batch, gather=gather, writers=2)


def call(key: str) -> ConsumeCall:
    return ConsumeCall("user_a", "m1", 1, key, LimitValue(1000), MONTH)


async def test_under_load_the_next_batch_gathers_the_calls_of_its_wait() -> None:
    # Two calls together are load: the calls that then arrive one by one are gathered into
    # one batch at the end of the wait, not written one transaction each, though the second
    # flusher is free all along (the wait is the queue's, not each flusher's).
    store = InMemoryStore()
    q = gathering(store, gather=0.3)
    async with asyncio.timeout(10):
        await asyncio.gather(q.consume(call("a")), q.consume(call("b")))
        later = []
        for i in range(10):
            later.append(asyncio.ensure_future(q.consume(call(f"k{i}"))))
            await asyncio.sleep(0.005)
        answers = await asyncio.gather(*later)
    assert store.units == 2
    assert sorted(a.used for a, _ in answers) == list(range(3, 13))


async def test_a_lone_call_is_never_delayed() -> None:
    store = InMemoryStore()
    q = gathering(store, gather=60)
    async with asyncio.timeout(5):
        for i in range(5):
            await q.consume(call(f"k{i}"))
    assert store.units == 5


async def test_a_full_batch_does_not_wait() -> None:
    store = InMemoryStore()
    q = gathering(store, gather=60, batch=4)
    async with asyncio.timeout(5):
        await asyncio.gather(*(q.consume(call(f"k{i}")) for i in range(12)))
    assert store.units == 3


class HeldStore(InMemoryStore):
    """A unit of work that waits until `release` is set (a transaction still running)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def run(self, work: Any) -> Any:
        await self.release.wait()
        return await super().run(work)


async def test_stopped_in_a_transaction_the_queued_calls_are_cancelled_not_stranded() -> None:
    store = HeldStore()
    q = gathering(store, gather=0)
    running = asyncio.ensure_future(q.consume(call("a")))
    await asyncio.sleep(0.01)  # its batch's transaction is running
    queued = asyncio.ensure_future(q.consume(call("b")))
    await asyncio.sleep(0.01)
    for task in list(q._tasks):  # as the loop's shutdown does
        task.cancel()
    await asyncio.wait([running, queued], timeout=5)
    assert running.cancelled() and queued.cancelled()
    assert store.data.usage.records == {}


async def test_stopped_while_gathering_the_queued_calls_are_cancelled_not_stranded() -> None:
    store = InMemoryStore()
    q = gathering(store, gather=60)
    await asyncio.gather(q.consume(call("a")), q.consume(call("b")))
    queued = asyncio.ensure_future(q.consume(call("c")))
    await asyncio.sleep(0.01)  # the flusher is waiting for its turn
    for task in list(q._tasks):  # as the loop's shutdown does
        task.cancel()
    await asyncio.wait([queued], timeout=5)
    assert queued.cancelled()
    assert ("user_a", "m1", "c") not in store.data.usage.records


class FirstHeldStore(InMemoryStore):
    """The first unit of work waits until `release` is set (a slow transaction); the loop's
    time is noted as each unit starts."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started: list[float] = []

    async def run(self, work: Any) -> Any:
        self.started.append(asyncio.get_running_loop().time())
        if len(self.started) == 1:
            await self.release.wait()
        return await super().run(work)


async def test_a_slow_transaction_does_not_hold_up_the_batch_behind_it() -> None:
    store = FirstHeldStore()
    q = gathering(store, gather=0.05)
    other = [ConsumeCall("user_b", "m1", 1, f"b{i}", LimitValue(10), MONTH) for i in range(3)]
    async with asyncio.timeout(5):
        slow = asyncio.gather(q.consume(call("a")), q.consume(call("b")))
        await asyncio.sleep(0)  # the first batch (two calls) is in its transaction
        answers = await asyncio.gather(*(q.consume(c) for c in other))
        assert not slow.done()  # answered while the first batch still runs
        store.release.set()
        await slow
    assert [a.used for a, _ in answers] == [1, 2, 3]
    first, second = store.started
    # On the shared cadence: not before the gather (less the moment between a batch's turn
    # being set and its unit of work starting); a flusher of its own would start at once.
    assert second - first >= 0.04
