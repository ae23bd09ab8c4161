"""One supervised group of a replica's background tasks (the change listener and follower,
heartbeats, health, housekeeping, …): each runs for as long as the server does; one that fails
is logged with its traceback and started again after a backoff (doubling from `first` up to
`most`, back to `first` after a run that lasted a minute), so a bug in one never silently stops
it nor takes the others down. `stop()` cancels them all and waits for each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]
STEADY_SECONDS = 60.0


class Supervisor:
    def __init__(self, first: float = 0.5, most: float = 30.0) -> None:
        self._first = first
        self._most = most
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, job: Job) -> None:
        """Run `job` (a coroutine function meant to run until cancelled) under supervision."""
        if name in self._tasks:
            raise ValueError(f"a background task named {name!r} is already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._supervise(name, job), name=name)

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    async def _supervise(self, name: str, job: Job) -> None:
        delay = self._first
        while True:
            started = time.monotonic()
            try:
                await job()
                log.error("background task %s returned; starting it again in %.1f s", name, delay)
            except asyncio.CancelledError:
                raise
            except Exception:  # broad on purpose: supervision outlives any failure of a task
                log.exception("background task %s failed; starting it again in %.1f s", name, delay)
            if time.monotonic() - started >= STEADY_SECONDS:
                delay = self._first
            self.restarts[name] += 1
            await asyncio.sleep(delay)
            delay = min(self._most, delay * 2)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until_stopped() -> None:
    """Until SIGTERM, SIGINT or SIGHUP (a process's stop, whatever sends it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
