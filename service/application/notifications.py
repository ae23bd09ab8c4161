"""Outbound change notifications (SPEC §10.4): what is sent, and the notifier that queues it.

The notifier follows the change log (the same one Watch follows) rather than each write path:
one task per replica tries to take the notify_state row (SKIP LOCKED: one notifier per database
at a time), reads the changes after its position, resolves the changed subjects, and queues one
delivery per endpoint in the transaction that moves the position. A subject whose last notified
answer has a `valid_until` in the past is resolved again too: changes by time alone (period
end, grace end, override or grant expiry) are notified within the polling interval.

Changes of one subject committed between two polls are one notification carrying the newest
state (its `version`); versions only grow per subject. The body carries subject ids and plan
terms only, never personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from service.application.failures import FailureRun
from service.application.records import ChangeBatch
from service.domain.resolution import Entitlements

log = logging.getLogger(__name__)

SCAN_BATCH = 500
GATHER_SECONDS = 0.05
EVENT_TYPE = "entitlements.changed"


@dataclass(frozen=True)
class Notice:
    """One change of one subject, to be sent to every endpoint under `message_id`."""

    subject: str
    version: int
    message_id: str
    body: str
    fingerprint: str
    valid_until_ms: int | None


@dataclass(frozen=True)
class Notified:
    """What a subject was last notified as."""

    version: int
    fingerprint: str


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def notice_data(ent: Entitlements) -> dict[str, object]:
    """The `data` of an entitlements.changed event: plan terms only, no personal data."""
    return {
        "subject": ent.subject,
        "plan": ent.plan.name,
        "features": sorted(ent.features),
        "limits": {
            name: {"value": limit.value if not limit.unlimited else 0, "unlimited": limit.unlimited}
            for name, limit in sorted(ent.limits.items())
        },
        "version": ent.version,
        "valid_until": _iso(ent.valid_until_ms),
    }


def make_notice(ent: Entitlements, now_ms: int) -> Notice:
    """The notice of `ent`; its id depends on the state only (one id per change, stable
    whichever replica queues it)."""
    data = notice_data(ent)
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    body = json.dumps(
        {"type": EVENT_TYPE, "timestamp": _iso(now_ms), "data": data}, separators=(",", ":")
    )
    return Notice(
        ent.subject, ent.version, f"ent_{fingerprint[:32]}", body, fingerprint, ent.valid_until_ms
    )


def backoff_seconds(
    attempts: int, cap: float, base: float = 0.5, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the next attempt after `attempts` failed ones: exponential from `base`,
    capped at `cap`, with jitter in [half, all] of it (never above the cap)."""
    exponent = min(max(attempts - 1, 0), 60)
    ceiling = min(cap, base * 2.0**exponent)
    return ceiling * (0.5 + 0.5 * rand())


class ScanTx(Protocol):
    """The notifier's transaction, holding the one-notifier lock until it ends."""

    position: int | None

    async def due(self, now_ms: int, limit: int) -> list[str]: ...

    async def notified(self, subjects: Sequence[str]) -> dict[str, Notified]: ...

    async def record(
        self, notices: Sequence[Notice], seen: Sequence[Notice], position: int
    ) -> int: ...


class Outbox(Protocol):
    def scanning(self, endpoints: Sequence[str]) -> AbstractAsyncContextManager[ScanTx | None]: ...

    async def oldest_pending_seconds(self) -> float: ...


Follow = Callable[[int, int], Awaitable[ChangeBatch]]
Horizon = Callable[[], Awaitable[tuple[int, int]]]
Load = Callable[[Sequence[str]], Awaitable[dict[str, Entitlements]]]
Bounds = Callable[[], Awaitable[tuple[int, int]]]
PRUNE_CHECK_MS = 60_000
NowMs = Callable[[], int]


class Notifier:
    """Queues notifications of committed changes and of changes by time (one per replica;
    one at a time per database)."""

    def __init__(
        self,
        outbox: Outbox,
        endpoints: Sequence[str],
        follow: Follow,
        horizon: Horizon,
        load: Load,
        now_ms: NowMs,
        poll_seconds: float = 1.0,
        on_queued: Callable[[], None] | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        self._outbox = outbox
        self._endpoints = list(endpoints)
        self._follow = follow
        self._horizon = horizon
        self._load = load
        self._now_ms = now_ms
        self.poll_seconds = poll_seconds
        self._on_queued = on_queued
        self._bounds = bounds
        self._bounds_checked_ms = -PRUNE_CHECK_MS
        self._failing = FailureRun("notifier", log)
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()  # set after the first scan: changes from then are sent

    def wake(self) -> None:
        """A change was committed (NOTIFY or local): scan now rather than at the next poll."""
        self._wake.set()

    async def scan_once(self) -> tuple[int, bool]:
        """One step: (deliveries queued, whether everything final was read)."""
        async with self._outbox.scanning(self._endpoints) as scan:
            if scan is None:  # another replica is scanning
                return 0, True
            now = self._now_ms()
            position = scan.position
            if position is None:  # first start: notify changes from now on
                position, _ = await self._horizon()
                log.info("notifications start at change-log position %d", position)
            await self._check_not_pruned(position, now)
            batch = await self._follow(position, SCAN_BATCH)
            due = await scan.due(now, SCAN_BATCH)
            subjects = sorted({s for _, _, s in batch.changes} | set(due))
            notices: list[Notice] = []
            seen: list[Notice] = []
            if subjects:
                states = await self._load(subjects)
                last = await scan.notified(subjects)
                for subject in subjects:
                    ent = states.get(subject)
                    if ent is None:
                        continue
                    notice = make_notice(ent, self._now_ms())
                    before = last.get(subject)
                    if before is not None and (
                        before.version > notice.version or before.fingerprint == notice.fingerprint
                    ):
                        if before.version <= notice.version:
                            seen.append(notice)  # same answer: only its valid_until moves on
                        continue
                    notices.append(notice)
            queued = await scan.record(notices, seen, batch.next_position)
        if queued and self._on_queued is not None:
            self._on_queued()
        return queued, batch.complete and len(due) < SCAN_BATCH

    async def _check_not_pruned(self, position: int, now_ms: int) -> None:
        """Changes before the log's pruned bound are gone (every replica was down longer than
        ENTITLEMENTS_CHANGE_LOG_RETENTION_SECONDS): say so, loudly, once a minute at most; the
        subjects they touched are notified at their next change or time boundary."""
        if self._bounds is None or now_ms - self._bounds_checked_ms < PRUNE_CHECK_MS:
            return
        self._bounds_checked_ms = now_ms
        pruned, _ = await self._bounds()
        if position < pruned:
            log.error(
                "notifications missed the changes between change-log positions %d and %d: they "
                "were pruned before the notifier read them (no replica ran for longer than "
                "ENTITLEMENTS_CHANGE_LOG_RETENTION_SECONDS); the subjects they touched are "
                "notified at their next change",
                position,
                pruned,
            )

    async def run(self) -> None:
        """Scan until cancelled: woken by commits, else every `poll_seconds`."""
        while True:
            self._wake.clear()
            complete = True
            try:
                _, complete = await self.scan_once()
                if not self.ready.is_set():
                    self.ready.set()
                    log.info("notifications: following the change log")
            except asyncio.CancelledError:
                raise
            except Exception:  # broad on purpose: the database away, whatever it is: retry
                self._failing.failed("cannot scan the change log")
            else:
                self._failing.recovered()
            if complete:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wake.wait()
                # Woken by a commit: let the commits of the next moment join this scan (under
                # a steady ingest, one scan per few dozen changes instead of one per change).
                await asyncio.sleep(GATHER_SECONDS)
