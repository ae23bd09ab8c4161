"""Supervised background tasks (service/entrypoints/supervision.py): a failing task is logged
with its traceback and started again with a growing delay; the others go on; stop() ends all."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.entrypoints.supervision import Supervisor

pytestmark = pytest.mark.unit


async def test_a_failing_task_is_restarted_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    ticks = 0
    fourth = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"failure {runs}")
        fourth.set()
        await asyncio.Event().wait()  # then runs until cancelled

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    supervisor = Supervisor(first=0.01, most=0.02)
    with caplog.at_level(logging.ERROR, logger="service.entrypoints.supervision"):
        supervisor.start("flaky", flaky)
        supervisor.start("steady", steady)
        async with asyncio.timeout(5):
            await fourth.wait()
        seen = ticks
        await asyncio.sleep(0.05)
        assert ticks > seen  # the steady task never stopped
        await supervisor.stop()
    assert supervisor.restarts == {"flaky": 3, "steady": 0}
    failures = [r for r in caplog.records if "background task flaky failed" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)
    after = ticks
    await asyncio.sleep(0.02)
    assert ticks == after  # stopped


async def test_a_task_that_returns_is_started_again() -> None:
    calls = 0
    third = asyncio.Event()

    async def short() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()

    supervisor = Supervisor(first=0.001, most=0.001)
    supervisor.start("short", short)
    async with asyncio.timeout(5):
        await third.wait()
    await supervisor.stop()
    with pytest.raises(ValueError, match="already running"):
        supervisor.start("again", short)
        supervisor.start("again", short)
    await supervisor.stop()
