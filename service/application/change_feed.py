"""Fan-out of committed changes: one follower of the change log per replica.

A single task reads the change log (woken by NOTIFY or a local commit, with a short poll as a
safety net), loads the entitlements of the subjects someone watches once, and hands each batch
to every WatchEntitlements stream in memory. An idle stream costs no database work: it waits on
its queue and sends a heartbeat every second.

The follower also keeps the stream's freshness: `lag_ms` is how far behind the stream may be.
Each poll remembers (when, the transaction-id ceiling then); once the horizon passes a ceiling,
everything committed before that poll has been read. A database that cannot be reached, or a
long transaction of this service's own that holds the horizon, shows as a growing lag, which
every heartbeat carries, so clients stop trusting their local copy instead of going silently
stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.application.failures import FailureRun
from service.application.ports import Cache
from service.application.records import ChangeBatch
from service.domain.errors import ResourceExhausted
from service.domain.resolution import Entitlements

log = logging.getLogger(__name__)

FOLLOW_BATCH = 500
# How often the follower asks which change log it follows (a database replaced or restored
# under a running replica is noticed within this, and its streams are ended).
IDENTITY_CHECK_SECONDS = 1.0
QUEUE_BATCHES = 256
# Heartbeats go out a little more often than every second, so none is ever more than 1 s late.
BEAT_SECONDS = 0.9


class TooManyStreams(ResourceExhausted):
    """Over the configured number of WatchEntitlements streams."""


@dataclass(frozen=True)
class StreamLimits:
    total: int = 10_000
    per_peer: int = 2_000


@dataclass
class Batch:
    """Changes [start, next_position) as (txid, version, subject), with the entitlements of the
    subjects any stream watches; `memo` holds wire messages built once for all streams."""

    start: int
    changes: list[tuple[int, int, str]]
    entitlements: dict[str, Entitlements]
    next_position: int
    memo: dict[Any, Any] = field(default_factory=dict)


@dataclass
class Tick:
    """A heartbeat for every stream: the follower's position, its lag, the server's clock.
    One object (and one wire message per position, in `memo`) serves every stream."""

    position: int
    lag_ms: int
    server_time_ms: int
    memo: dict[Any, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Subscription:
    subjects: frozenset[str] | None  # None: every subject
    peer: str
    queue: asyncio.Queue[Batch | Tick] = field(default_factory=lambda: asyncio.Queue(QUEUE_BATCHES))
    overflowed: bool = False

    def wants(self, subject: str) -> bool:
        return self.subjects is None or subject in self.subjects


def wall_ms() -> float:
    """The feed's clock: lag and heartbeat times measure real elapsed time (not the
    application's Clock, which tests may freeze to move plan state through time)."""
    return time.time() * 1000


Follow = Callable[[int, int], Awaitable[ChangeBatch]]
Horizon = Callable[[], Awaitable[tuple[int, int]]]
Identity = Callable[[], Awaitable[str]]
Load = Callable[[Sequence[str]], Awaitable[dict[str, Entitlements]]]


class ChangeHub:
    def __init__(
        self,
        cache: Cache | None,
        limits: StreamLimits | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self._cache = cache
        self.limits = limits or StreamLimits()
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._subscriptions: set[Subscription] = set()
        # Who wants what, so a batch costs O(changes), not O(streams).
        self._unfiltered: set[Subscription] = set()
        self._by_subject: dict[str, set[Subscription]] = {}
        self._per_peer: dict[str, int] = {}
        self.position: int | None = None  # None until the follower has started
        # The identity of the change log `position` belongs to ("" until the follower has
        # started); every heartbeat carries it, a resuming stream must name it.
        self.log_id = ""
        self.listening = False  # the change listener is connected (`entitlements status`)
        self._identity_checked_ms = 0.0
        self.started = asyncio.Event()
        self._complete_at_ms: float = wall_ms()
        self._ceilings: deque[tuple[float, int]] = deque(maxlen=10_000)
        self.reads = 0  # change-log reads by the follower (a test counts them)
        # Called on every change (e.g. the notifier's wake-up), besides the follower's.
        self.wakers: list[Callable[[], None]] = []

    # ---- notifications (NOTIFY listener and local commits) ------------------------------

    def on_change(self, version: int, subject: str) -> None:
        if self._cache is not None:
            self._cache.invalidate(subject)
        self._wake.set()
        for wake in self.wakers:
            wake()

    def on_live(self, live: bool) -> None:
        self.listening = live
        if self._cache is not None:
            self._cache.set_live(live)
        self._wake.set()  # read the log again: nothing is missed across a reconnect

    # ---- streams -------------------------------------------------------------------------

    def subscribe(self, subjects: Sequence[str] | None, peer: str) -> Subscription:
        if len(self._subscriptions) >= self.limits.total:
            raise TooManyStreams(
                f"this replica serves at most {self.limits.total} watch streams; retry later"
            )
        if self._per_peer.get(peer, 0) >= self.limits.per_peer:
            raise TooManyStreams(
                f"at most {self.limits.per_peer} watch streams per client address; retry later"
            )
        subscription = Subscription(frozenset(subjects) if subjects else None, peer)
        self._subscriptions.add(subscription)
        if subscription.subjects is None:
            self._unfiltered.add(subscription)
        else:
            for subject in subscription.subjects:
                self._by_subject.setdefault(subject, set()).add(subscription)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self._unfiltered.discard(subscription)
            for subject in subscription.subjects or ():
                watchers = self._by_subject.get(subject)
                if watchers is not None:
                    watchers.discard(subscription)
                    if not watchers:
                        del self._by_subject[subject]
            left = self._per_peer.get(subscription.peer, 1) - 1
            if left:
                self._per_peer[subscription.peer] = left
            else:
                self._per_peer.pop(subscription.peer, None)

    @property
    def streams(self) -> int:
        return len(self._subscriptions)

    def lag_ms(self) -> int:
        """How far behind the streams may be: everything committed before now - lag is read."""
        return max(0, int(wall_ms() - self._complete_at_ms))

    # ---- heartbeats ------------------------------------------------------------------------

    async def beat(self, seconds: float = BEAT_SECONDS) -> None:
        """Queue a heartbeat for every stream, every `seconds` (one task per replica: no
        timer per stream, so an idle stream costs one queued object a second)."""
        await self.started.wait()
        while True:
            await asyncio.sleep(seconds)
            assert self.position is not None
            tick = Tick(self.position, self.lag_ms(), int(wall_ms()))
            for subscription in self._subscriptions:
                self._offer(subscription, tick)

    @staticmethod
    def _offer(subscription: Subscription, item: Batch | Tick) -> None:
        if subscription.overflowed:
            return
        try:
            subscription.queue.put_nowait(item)
        except asyncio.QueueFull:
            subscription.overflowed = True  # the stream re-reads from the database

    # ---- the follower --------------------------------------------------------------------

    async def follow(self, horizon: Horizon, read: Follow, load: Load, identity: Identity) -> None:
        """Follow the change log until cancelled (one task per replica). A failure is logged
        with its traceback when a run of failures starts, counted while it lasts and reported
        when it ends; the follower retries every poll interval meanwhile (the lag grows, and
        the staleness bound of every cache built on it holds: SPEC §9)."""
        failing = FailureRun("change follower")
        while self.position is None:
            try:
                log_id = await identity()
                self.position, _ = await horizon()
                self.log_id = log_id
                self._identity_checked_ms = wall_ms()
            except Exception:  # broad on purpose: the database not there yet, whatever it is
                failing.failed("cannot start yet")
                await asyncio.sleep(self.poll_seconds)
        failing.recovered()
        self.started.set()
        while True:
            self._wake.clear()
            try:
                if wall_ms() - self._identity_checked_ms >= IDENTITY_CHECK_SECONDS * 1000:
                    await self._check_identity(identity, horizon)
                complete = await self._step(read, load)
            except asyncio.CancelledError:
                raise
            except Exception:  # broad on purpose: following must outlive any one failure
                failing.failed("cannot read the change log")
                complete = True
            else:
                failing.recovered()
            if complete:
                # asyncio.timeout, not wait_for: wait_for may swallow a cancellation that
                # arrives as the wake-up does, and the follower would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wake.wait()

    async def _check_identity(self, identity: Identity, horizon: Horizon) -> None:
        """Another change log under the same address (a database wiped, replaced or restored):
        positions in the old one mean nothing here. Forget what was cached, start from the new
        log's horizon and end every stream (clients resync: SPEC §10.5)."""
        log_id = await identity()
        self._identity_checked_ms = wall_ms()
        if log_id == self.log_id:
            return
        position, _ = await horizon()
        log.warning(
            "the change log changed under this replica (database replaced or restored): "
            "cache cleared, %d watch streams ended",
            len(self._subscriptions),
        )
        if self._cache is not None:
            self._cache.clear()
        self.position, self.log_id = position, log_id
        self._ceilings.clear()
        self._complete_at_ms = wall_ms()
        for subscription in self._subscriptions:
            subscription.overflowed = True  # the stream ends; watch.py sees the new log_id
            with contextlib.suppress(asyncio.QueueFull):
                subscription.queue.put_nowait(Tick(position, 0, int(wall_ms())))

    async def _step(self, read: Follow, load: Load) -> bool:
        assert self.position is not None
        polled_at = wall_ms()
        batch = await read(self.position, FOLLOW_BATCH)
        self.reads += 1
        self._ceilings.append((polled_at, batch.xmax))
        wanted = self._wanted({subject for _, _, subject in batch.changes})
        entitlements = await load(sorted(wanted)) if wanted else {}
        start, self.position = self.position, batch.next_position
        if batch.complete:
            # Everything that had a transaction id at an earlier poll is now below the
            # horizon: all it committed has been read.
            horizon = batch.next_position
            while self._ceilings and self._ceilings[0][1] <= horizon:
                self._complete_at_ms = max(self._complete_at_ms, self._ceilings.popleft()[0])
        if batch.changes:
            self._publish(Batch(start, batch.changes, entitlements, batch.next_position))
        return batch.complete

    def _wanted(self, changed: set[str]) -> set[str]:
        if self._unfiltered:
            return changed
        return {subject for subject in changed if subject in self._by_subject}

    def _publish(self, batch: Batch) -> None:
        targets = set(self._unfiltered)
        for _, _, subject in batch.changes:
            targets.update(self._by_subject.get(subject, ()))
        for subscription in targets:  # the others learn the new position from the next tick
            self._offer(subscription, batch)
