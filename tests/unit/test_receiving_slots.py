"""The receive slots (grpc_api/receiving.py): at most `slots` requests received at once, the
rest waiting in line and served first come, first served; a slot comes back however its read
ends (answered, refused, cancelled, cancelled while waiting, cancelled just as it was handed
over), so none is ever lost and none made up."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.entrypoints.grpc_api.receiving import Receiving

pytestmark = pytest.mark.unit


class Aborted(Exception):
    pass


class Held:
    """A call whose request arrives when the test says so."""

    reading = 0  # reads in progress, over every call
    most_reading = 0

    def __init__(self, name: str, started: list[str]) -> None:
        self.name = name
        self._started = started
        self.arrive = asyncio.Event()
        self.on_return: Any = None  # called as the read returns, before its slot is given back

    async def read(self) -> Any:
        self._started.append(self.name)
        Held.reading += 1
        Held.most_reading = max(Held.most_reading, Held.reading)
        try:
            await self.arrive.wait()
        finally:
            Held.reading -= 1
        if self.on_return is not None:
            self.on_return()
        return self.name

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted


def _in_line(
    receiving: Receiving, names: list[str], started: list[str]
) -> tuple[list[Held], list[asyncio.Task[Any]]]:
    """Calls named `names`, each asking `receiving` for its request, in that order."""
    calls = [Held(name, started) for name in names]
    tasks = [asyncio.ensure_future(receiving.request(c)) for c in calls]  # type: ignore[arg-type]
    return calls, tasks


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_slots_reads_at_once_and_the_rest_in_arrival_order() -> None:
    receiving = Receiving(slots=2, timeout=30)
    started: list[str] = []
    calls, tasks = _in_line(receiving, [f"c{i}" for i in range(5)], started)
    await _settle()
    assert started == ["c0", "c1"]
    assert receiving.free == 0
    calls[1].arrive.set()
    await _settle()
    assert started == ["c0", "c1", "c2"]  # the first in line, not any
    for call in calls:
        call.arrive.set()
    async with asyncio.timeout(5):
        assert await asyncio.gather(*tasks) == [c.name for c in calls]
    assert receiving.free == 2


async def test_a_call_cancelled_in_line_leaves_it_and_takes_no_slot() -> None:
    receiving = Receiving(slots=1, timeout=30)
    started: list[str] = []
    (first, _, last), (t_first, t_waiting, t_last) = _in_line(
        receiving, ["first", "waiting", "last"], started
    )
    await _settle()
    t_waiting.cancel()
    await _settle()
    first.arrive.set()
    last.arrive.set()
    async with asyncio.timeout(5):
        assert await t_first == "first"
        assert await t_last == "last"
    assert started == ["first", "last"]
    assert t_waiting.cancelled()
    assert receiving.free == 1


async def test_a_call_cancelled_as_its_slot_is_handed_over_gives_it_back() -> None:
    receiving = Receiving(slots=1, timeout=30)
    started: list[str] = []
    (first, _, last), (t_first, t_handed, t_last) = _in_line(
        receiving, ["first", "handed", "last"], started
    )
    await _settle()
    # Cancelled in the same turn of the loop as `first` hands it its slot: the cancellation
    # runs before `handed` wakes up with the slot.
    first.on_return = lambda: asyncio.get_running_loop().call_soon(t_handed.cancel)
    first.arrive.set()
    assert await t_first == "first"
    last.arrive.set()
    async with asyncio.timeout(5):  # a lost slot would leave `last` in line for ever
        assert await t_last == "last"
    assert t_handed.cancelled()
    assert "handed" not in started
    assert receiving.free == 1


@settings(max_examples=50, deadline=None)
@given(
    slots=st.integers(min_value=1, max_value=4),
    fates=st.lists(st.sampled_from(["answer", "cancel", "late"]), min_size=1, max_size=12),
)
def test_every_slot_comes_back_whatever_the_reads_do(slots: int, fates: list[str]) -> None:
    """However the reads end, once they all have every slot is free, and no more than `slots`
    were ever read at once."""

    async def scenario() -> None:
        receiving = Receiving(slots=slots, timeout=0.02)
        started: list[str] = []
        Held.reading = Held.most_reading = 0
        calls, tasks = _in_line(receiving, [f"c{i}" for i in range(len(fates))], started)
        for call, fate, task in zip(calls, fates, tasks, strict=True):
            await asyncio.sleep(0)
            if fate == "answer":
                call.arrive.set()
            elif fate == "cancel":
                task.cancel()
            # "late": never arrives; the deadline answers it
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks, return_exceptions=True)
        assert receiving.free == slots
        assert Held.most_reading <= slots  # counted by the reads themselves
        assert not receiving._reading

    asyncio.run(scenario())
