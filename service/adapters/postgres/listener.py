"""LISTEN for committed changes on a dedicated connection, reconnecting when it drops.

Every replica runs one. A change invalidates that subject in the local cache and wakes the
WatchEntitlements streams; losing the connection means notifications may have been missed,
so the whole cache is dropped (and bypassed until the listener is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from service.adapters.postgres.base import CHANGES_CHANNEL
from service.application.failures import FailureRun

log = logging.getLogger(__name__)


class ChangeListener:
    def __init__(
        self,
        dsn: str,
        on_change: Callable[[int, str], None],
        on_live: Callable[[bool], None],
        keepalive_seconds: float = 2.0,
    ) -> None:
        self._dsn = dsn
        self._on_change = on_change
        self._on_live = on_live
        self._keepalive = keepalive_seconds
        self.live = False

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        version, _, subject = str(payload).partition(":")
        try:
            self._on_change(int(version), subject)
        except ValueError:
            log.warning("ignoring malformed change notification")

    async def run(self) -> None:
        """Listen until cancelled; reconnect with backoff after any failure."""
        backoff = 0.1
        failures = FailureRun("change listener", log)
        while True:
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANGES_CHANNEL, self._notified)
                self.live = True
                failures.recovered()
                self._on_live(True)
                backoff = 0.1
                while not lost.is_set():
                    # asyncio.timeout, not wait_for: wait_for may swallow a cancellation
                    # that arrives as the wait ends, and the task would never stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._keepalive):
                            await lost.wait()
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=self._keepalive)
            except asyncio.CancelledError:
                raise
            except Exception:  # broad on purpose: the listener must outlive any one connection
                failures.failed("lost its connection or could not connect")
            finally:
                if self.live:
                    self.live = False
                    self._on_live(False)
                    log.warning("change listener lost its connection: cache dropped until back")
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
