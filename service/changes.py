"""Fan-out of committed changes to this replica's cache and WatchEntitlements streams."""

from __future__ import annotations

import asyncio

from service.cache import EntitlementCache


class ChangeHub:
    def __init__(self, cache: EntitlementCache | None) -> None:
        self._cache = cache
        self._waiters: set[asyncio.Event] = set()

    def on_change(self, version: int, subject: str) -> None:
        if self._cache is not None:
            self._cache.invalidate(subject)
        self._wake()

    def on_live(self, live: bool) -> None:
        if self._cache is not None:
            self._cache.set_live(live)
        self._wake()  # streams re-read the log: nothing is missed across a reconnect

    def _wake(self) -> None:
        for event in self._waiters:
            event.set()

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)
