"""Cache misses that wait at the same moment are read in one query (application/reads.py): each
caller gets its own subject's entry, one caller giving up cancels no other, and a failed read
fails each waiter with the read's error (over an in-memory StateReader)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from service.adapters.cache import EntitlementCache
from service.application.ports import StoreUnavailable
from service.application.reads import READ_GATHER_SECONDS, EntitlementReader
from service.config import load_catalog
from service.domain.resolution import SubjectState
from tests.support.fakes import FakeClock

pytestmark = pytest.mark.unit

CATALOG = load_catalog(None)


class CountingStates:
    """StateReader: empty states, each call recorded; `fail` makes the next calls raise."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]:
        self.calls.append(list(subjects))
        await self.gate.wait()
        if self.fail:
            raise StoreUnavailable("database unavailable")
        return {s: SubjectState(s) for s in subjects}


def reader(states: CountingStates, gather: float = READ_GATHER_SECONDS) -> EntitlementReader:
    cache = EntitlementCache(100)
    cache.set_live(True)  # the change listener is connected
    return EntitlementReader(states, CATALOG, cache, FakeClock(), gather=gather)


async def test_misses_of_one_moment_are_one_query() -> None:
    states = CountingStates()
    reads = reader(states)
    who = [f"user_{i}" for i in range(20)]
    entries = await asyncio.gather(*(reads.get(w) for w in who + who[:5]))
    assert [e.entitlements.subject for e in entries] == who + who[:5]
    assert len(states.calls) == 1 and sorted(states.calls[0]) == sorted(who)
    await reads.get("user_0")  # cached now: no query
    assert len(states.calls) == 1


async def test_one_caller_giving_up_cancels_no_other() -> None:
    states = CountingStates()
    states.gate.clear()
    reads = reader(states)
    gone = asyncio.ensure_future(reads.get("user_a"))
    kept = asyncio.ensure_future(reads.get("user_a"))
    await asyncio.sleep(0.01)
    gone.cancel()
    states.gate.set()
    assert (await kept).entitlements.subject == "user_a"
    assert gone.cancelled()


async def test_a_failed_read_fails_each_waiter_and_the_next_read_retries() -> None:
    states = CountingStates()
    states.fail = True
    reads = reader(states)
    outcomes = await asyncio.gather(
        reads.get("user_a"), reads.get("user_b"), return_exceptions=True
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    states.fail = False
    assert (await reads.get("user_a")).entitlements.subject == "user_a"
    assert len(states.calls) == 2


async def test_misses_arriving_while_the_readers_are_busy_wait_for_one_query_together() -> None:
    """Under load the number of queries stays at the readers' (2), whatever the rate of
    misses: those that arrive while both queries run go together in the next one."""
    states = CountingStates()
    states.gate.clear()
    reads = reader(states)
    first = [asyncio.ensure_future(reads.get(f"user_{i}")) for i in range(2)]
    await asyncio.sleep(0.01)
    second = [asyncio.ensure_future(reads.get(f"user_{i}")) for i in range(2, 4)]
    await asyncio.sleep(0.01)
    assert states.calls == [["user_0", "user_1"], ["user_2", "user_3"]]  # both readers busy
    later = []
    for i in range(4, 40):  # one miss per turn of the loop, as calls arrive under load
        later.append(asyncio.ensure_future(reads.get(f"user_{i}")))
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert len(states.calls) == 2  # none of them read yet: no reader free
    states.gate.set()
    entries = await asyncio.gather(*first, *second, *later)
    assert [e.entitlements.subject for e in entries] == [f"user_{i}" for i in range(40)]
    assert states.calls[2:] == [[f"user_{i}" for i in range(4, 40)]]


async def test_a_query_of_misses_takes_at_most_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.application.reads.MAX_READ_TOGETHER", 7)
    states = CountingStates()
    reads = reader(states)
    who = [f"user_{i}" for i in range(30)]
    entries = await asyncio.gather(*(reads.get(w) for w in who))
    assert [e.entitlements.subject for e in entries] == who
    assert max(len(c) for c in states.calls) == 7
    assert states.calls[:2] == [who[:7], who[7:14]]  # both readers at once, each at the cap
    assert sorted(s for c in states.calls for s in c) == sorted(who)


async def test_with_a_cache_misses_after_a_query_gather_for_the_next_one() -> None:
    """Under load misses arrive one per turn while a reader is free: each was a query of its
    own. Within `gather` of the query before, they wait and go together."""
    states = CountingStates()
    reads = reader(states, gather=0.3)
    async with asyncio.timeout(10):
        await reads.get("user_0")
        later = []
        for i in range(1, 11):
            later.append(asyncio.ensure_future(reads.get(f"user_{i}")))
            await asyncio.sleep(0.005)
        entries = await asyncio.gather(*later)
    assert [e.entitlements.subject for e in entries] == [f"user_{i}" for i in range(1, 11)]
    assert states.calls == [["user_0"], [f"user_{i}" for i in range(1, 11)]]


async def test_a_miss_long_after_the_last_query_is_read_at_once() -> None:
    states = CountingStates()
    reads = reader(states, gather=0.05)
    await reads.get("user_0")
    await asyncio.sleep(0.1)
    late = asyncio.ensure_future(reads.get("user_1"))
    for _ in range(3):  # get(), then the next turn's _read_together
        await asyncio.sleep(0)
    assert states.calls == [["user_0"], ["user_1"]]
    await late


async def test_without_a_cache_every_miss_is_read_at_once() -> None:
    states = CountingStates()
    reads = EntitlementReader(states, CATALOG, None, FakeClock(), gather=60)
    async with asyncio.timeout(5):
        for i in range(5):
            await reads.get(f"user_{i}")
    assert len(states.calls) == 5


async def test_a_full_query_of_misses_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.application.reads.MAX_READ_TOGETHER", 7)
    states = CountingStates()
    reads = reader(states, gather=60)
    who = [f"user_{i}" for i in range(28)]
    async with asyncio.timeout(5):
        await asyncio.gather(*(reads.get(w) for w in who))
    assert [len(c) for c in states.calls] == [7, 7, 7, 7]
