"""Use case: read a subject's entitlements, from the cache when it may be trusted.

An entry is never used past its `valid_until`: it is then re-resolved from the cached state
(time passing changes the answer, not the state), which needs no database round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import islice

from service.application.ports import (
    Cache,
    Clock,
    NoOperatorEvents,
    OperatorEvents,
    StateReader,
)
from service.application.records import CacheEntry
from service.domain.catalog import Catalog
from service.domain.resolution import (
    Entitlements,
    EntitlementStatus,
    SubjectState,
    plan_entitlements,
    resolve,
)
from service.domain.subjects import require_subject

log = logging.getLogger(__name__)

MAX_READ_TOGETHER = 1000  # subjects in one query of misses
# With a cache, the least time from one query of misses to the next, unless a full query
# waits (_read_together).
READ_GATHER_SECONDS = 0.005


def default_entitlements(
    catalog: Catalog, subject: str, now_ms: int, version: int = 0
) -> Entitlements:
    """What a subject gets when its stored state cannot be read: the default plan (with its
    metered limits' periods, as any answer)."""
    try:
        return resolve(SubjectState(subject, version=version), catalog, now_ms)
    except Exception:  # broad on purpose: this is the answer of last resort, it must not raise
        log.exception("cannot resolve the default plan for %s", subject)
        return plan_entitlements(
            subject, catalog.default_plan, EntitlementStatus.DEFAULT, None, version
        )


class EntitlementReader:
    def __init__(
        self,
        states: StateReader,
        catalog: Catalog,
        cache: Cache | None,
        clock: Clock,
        events: OperatorEvents | None = None,
        readers: int = 2,
        gather: float = READ_GATHER_SECONDS,
    ) -> None:
        self._states = states
        self._catalog = catalog
        self._clock = clock
        self.cache = cache
        self._events = events or NoOperatorEvents()
        # Misses are read together (_read_together): at most `readers` queries at once, each
        # taking every miss that queued while the others ran (at most MAX_READ_TOGETHER).
        self._readers = readers
        self._waiting: dict[str, asyncio.Future[CacheEntry]] = {}
        self._reading: set[asyncio.Task[None]] = set()
        # ... and, with a cache, no sooner than `gather` after the one before began.
        self._gather = gather if cache is not None else 0.0
        self._last_read = float("-inf")
        self._gathering: asyncio.TimerHandle | None = None

    def cached(self, subject: str, now_ms: int) -> CacheEntry | None:
        """The cached entry, re-resolved if its answer has expired; None on a miss."""
        cache = self.cache
        if cache is None:
            return None
        entry = cache.get(subject)
        if entry is None:
            return None
        until = entry.until_ms
        if until is not None and now_ms >= until:
            entry = CacheEntry(entry.state, self._resolve(entry.state, now_ms))
            cache.replace(subject, entry)
        return entry

    def _resolve(self, state: SubjectState, now_ms: int) -> Entitlements:
        """Resolve one subject; a failure is logged, counted and isolated to that subject."""
        try:
            return resolve(state, self._catalog, now_ms)
        except Exception:  # broad on purpose: one subject's odd state must not fail the read
            self._events.read_failed()
            log.exception("cannot resolve %s; answering the default plan", state.subject)
            return default_entitlements(self._catalog, state.subject, now_ms, state.version)

    async def get(self, subject: str) -> CacheEntry:
        """One subject: the cache is looked in once, PostgreSQL read on a miss."""
        entry = self.cached_now(subject)
        if entry is not None:
            return entry
        return await self.load_one(subject)

    def cached_now(self, subject: str) -> CacheEntry | None:
        """The cached entry as of now, without suspending (None: a miss, then `load_one`): `get`
        in two halves, for the hottest callers (CanUse), which save a coroutine per call."""
        return self.cached(subject, self._clock.now_ms())

    async def load_one(self, subject: str) -> CacheEntry:
        """One subject the cache does not hold, read from PostgreSQL (with the other misses
        of the moment)."""
        require_subject(subject)
        waiting = self._waiting.get(subject)
        if waiting is None:
            waiting = self._waiting[subject] = asyncio.get_running_loop().create_future()
            if len(self._waiting) == 1:  # the first of this moment: read them all soon
                asyncio.get_running_loop().call_soon(self._read_together)
        return await asyncio.shield(waiting)  # one caller giving up cancels no other

    def _read_together(self) -> None:
        """The misses queued so far, in `load`s (a query each, at most MAX_READ_TOGETHER
        subjects) while a reader is free; with every reader busy, the first to finish comes
        back here for them.

        Group commit's pattern, for reads: idle, a miss is read at the next turn of the loop;
        under load, the misses that arrive while the readers' queries run wait for the next
        one, so the number of queries stays at the readers' whatever the rate of misses, and
        each costs its round trip once for many subjects.

        With a cache, a query also waits until `gather` has passed since the one before began
        (unless a full query's misses wait): misses are then first reads of subjects, which
        come in bursts (a cold start, a new batch of users), and they arrived one per turn of
        the loop, each read alone by a reader that was free (6 532 of 7 619 queries of one
        subject, 10 000 new subjects under load). An occasional miss, long after the last
        query, is read at once. Without a cache (`ENTITLEMENTS_CACHE=off`, the measurement
        mode whose point is a query per call) every miss is read as before."""
        loop = asyncio.get_running_loop()
        while self._waiting and len(self._reading) < self._readers:
            now, due = loop.time(), self._last_read + self._gather
            if now < due and len(self._waiting) < MAX_READ_TOGETHER:
                if self._gathering is None:
                    self._gathering = loop.call_at(due, self._gathered)
                return
            self._last_read = now
            taken = list(islice(self._waiting, MAX_READ_TOGETHER))
            waiting = {subject: self._waiting.pop(subject) for subject in taken}
            task = asyncio.ensure_future(self._load_into(waiting))
            self._reading.add(task)
            task.add_done_callback(self._read_done)

    def _gathered(self) -> None:
        self._gathering = None
        self._read_together()

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reading.discard(task)
        if not task.cancelled():  # (cancelled: the service is stopping)
            self._read_together()  # what queued meanwhile

    async def _load_into(self, waiting: dict[str, asyncio.Future[CacheEntry]]) -> None:
        try:
            entries = await self._load_checked(list(waiting))  # each checked by get()
        except BaseException as exc:  # broad on purpose: each waiter gets the read's error
            for future in waiting.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: a waiter that gave up logs nothing
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for subject, future in waiting.items():
            if not future.done():
                future.set_result(entries[subject])

    async def get_many(self, subjects: Sequence[str]) -> dict[str, CacheEntry]:
        now = self._clock.now_ms()
        found: dict[str, CacheEntry] = {}
        missing: list[str] = []
        for subject in subjects:
            if subject in found:
                continue
            entry = self.cached(subject, now)
            if entry is None:
                missing.append(subject)
            else:
                found[subject] = entry
        if missing:
            found.update(await self.load(missing))
        return found

    async def load(self, subjects: Sequence[str]) -> dict[str, CacheEntry]:
        """Read from PostgreSQL, resolve, and cache unless invalidated meanwhile."""
        for subject in subjects:
            require_subject(subject)
        return await self._load_checked(subjects)

    async def _load_checked(self, subjects: Sequence[str]) -> dict[str, CacheEntry]:
        generation = self.cache.generation if self.cache is not None else 0
        states = await self._states.load_states(subjects)
        now = self._clock.now_ms()
        entries = {s: CacheEntry(st, self._resolve(st, now)) for s, st in states.items()}
        if self.cache is not None:
            for subject, entry in entries.items():
                self.cache.put(subject, entry, generation)
        return entries
