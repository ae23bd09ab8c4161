"""Use case: WatchEntitlements, the resume / catch-up protocol over the replica's one change
follower (change_feed.py), independent of the wire.

A stream subscribes first, then (when resuming) reads what it missed from the database up to
the follower's position, then takes the follower's batches from memory. Every change message's
`version` is a resume point; a heartbeat goes out at least every second with the server's time
and the lag, so a client can tell a quiet stream from a stale one. A stream names the change
log its resume point belongs to: another log's positions mean nothing here (OUT_OF_RANGE).

The messages themselves are the entrypoint's (`MessageBuilder`): this module decides what is
sent and when, each message built once per batch for every stream that wants it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from service.application.change_feed import Batch, ChangeHub, Subscription, Tick, wall_ms
from service.application.ports import ChangeLog, NoOperatorEvents, OperatorEvents
from service.application.reads import EntitlementReader, default_entitlements
from service.domain.catalog import Catalog
from service.domain.errors import InvalidArgument, OutOfRange, ResourceExhausted
from service.domain.resolution import Entitlements
from service.domain.subjects import require_subject

log = logging.getLogger(__name__)

CATCH_UP_BATCH = 500
LOG_REPLACED = (
    "the change log this stream followed was replaced (database wiped or restored); "
    "re-sync and watch without since_version"
)

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)


class MessageBuilder(Protocol[M_co]):
    """The wire's messages of a stream (the gRPC and Connect servers share one)."""

    def change(self, subject: str, entitlements: Entitlements, version: int) -> M_co: ...

    def heartbeat(
        self, position: int, lag_ms: int, server_time_ms: int, log_id: str, catalog: str
    ) -> M_co: ...


class WatchEntitlements(Generic[M]):
    def __init__(
        self,
        hub: ChangeHub,
        change_log: ChangeLog,
        reads: EntitlementReader,
        catalog: Catalog,
        build: MessageBuilder[M],
        max_subjects: int,
        events: OperatorEvents | None = None,
    ) -> None:
        self._hub = hub
        self._change_log = change_log
        self._reader = reads
        self._catalog = catalog
        self._build = build
        self._max_subjects = max_subjects
        self._events = events or NoOperatorEvents()

    async def open(
        self, subjects: Sequence[str], since: int | None, peer: str, log_id: str = ""
    ) -> AsyncIterator[M]:
        """A stream of `subjects` (none: every subject) from `since` (None: from now) on, until
        the caller goes away; checked before anything is sent. `log_id`: the change log
        `since` was a position of."""
        # A stream names at most ENTITLEMENTS_WATCH_MAX_SUBJECTS subjects: each costs memory
        # for as long as it lives (checked before anything per subject is built).
        if len(subjects) > self._max_subjects:
            raise ResourceExhausted(
                f"at most {self._max_subjects} subjects per WatchEntitlements stream; "
                "watch every subject (none named) or split the list"
            )
        wanted = [require_subject(s) for s in subjects] or None
        if since is not None:
            if since < 0:
                raise InvalidArgument("since_version must not be negative")
            pruned, ceiling = await self._change_log.change_log_bounds()
            if since < pruned or since > ceiling:
                raise OutOfRange(
                    f"since_version {since} is outside the change log "
                    f"({pruned}..{ceiling}); re-sync and watch without since_version"
                )
        await self._live_position()
        if since is not None and log_id and log_id != self._hub.log_id:
            raise OutOfRange(LOG_REPLACED)
        return self._stream(wanted, since, peer)

    async def _stream(
        self, subjects: Sequence[str] | None, since: int | None, peer: str
    ) -> AsyncIterator[M]:
        position = since
        log_id = self._hub.log_id
        while True:  # once per (re)subscription: a stream that fell behind starts over here
            if self._hub.log_id != log_id:  # replaced under this stream (change_feed.py)
                raise OutOfRange(LOG_REPLACED)
            subscription = self._hub.subscribe(subjects, peer)
            try:
                live = await self._live_position()
                if position is None:
                    position = live
                else:
                    # A resuming stream reads up to the horizon now, not just the follower's
                    # position: everything committed before it asked comes before its first
                    # heartbeat (the follower's batches below that are skipped).
                    live = max(live, (await self._change_log.change_log_horizon())[0])
                while position < live:  # what it missed, from the database
                    changes, position = await self._change_log.changes_between(
                        position, live, subjects, CATCH_UP_BATCH
                    )
                    for message in await self._loaded_messages(changes):
                        yield message
                yield self._heartbeat_now(position)
                followed = [position]
                async for message in self._follow(subscription, followed, log_id):
                    yield message
                position = followed[0]
            finally:
                self._hub.unsubscribe(subscription)

    async def _live_position(self) -> int:
        await self._hub.started.wait()
        assert self._hub.position is not None
        return self._hub.position

    async def _follow(
        self, subscription: Subscription, at: list[int], log_id: str
    ) -> AsyncIterator[M]:
        """Messages from the follower's batches and heartbeats, keeping the resume position in
        `at[0]`; ends when the stream's queue overflowed (it then re-reads the database) or
        the change log was replaced."""
        position = at[0]
        while not subscription.overflowed:
            item = await subscription.queue.get()
            if self._hub.log_id != log_id:
                return
            if isinstance(item, Tick):
                # Everything queued before the tick has been sent: its position holds.
                position = at[0] = max(position, item.position)
                message = item.memo.get(position)
                if message is None:
                    message = item.memo[position] = self._heartbeat(
                        position, item.lag_ms, item.server_time_ms
                    )
                yield message
                continue
            for message in self._batch_messages(item, subscription, position):
                yield message
            position = at[0] = max(position, item.next_position)
            if subscription.queue.empty():
                yield self._heartbeat_now(position)

    def _batch_messages(self, batch: Batch, subscription: Subscription, position: int) -> list[M]:
        """The batch's messages this stream wants, each built once for every stream."""
        messages = []
        for txid, subject, version in _resume_points(batch.changes):
            if txid < position or not subscription.wants(subject):
                continue
            message = batch.memo.get((subject, version))
            if message is None:
                message = batch.memo[(subject, version)] = self._message(
                    subject, batch.entitlements.get(subject), version
                )
            messages.append(message)
        return messages

    async def _loaded_messages(self, changes: list[tuple[int, int, str]]) -> list[M]:
        """Messages for changes read from the database (a resuming stream catching up)."""
        if not changes:
            return []
        entries = await self._reader.load(list({subject for _, _, subject in changes}))
        return [
            self._message(
                subject, entries[subject].entitlements if subject in entries else None, version
            )
            for _, subject, version in _resume_points(changes)
        ]

    def _message(self, subject: str, entitlements: Entitlements | None, version: int) -> M:
        """One change's message; a subject's problem never ends every watcher's stream (it is
        logged, counted and sent with the default plan)."""
        if entitlements is not None:
            try:
                return self._build.change(subject, entitlements, version)
            except Exception:  # broad on purpose: one subject's message never ends the stream
                log.exception("watch: cannot build the message for %s", subject)
        else:
            log.error("watch: no entitlements loaded for %s", subject)
        self._events.watch_message_failed()
        fallback = default_entitlements(self._catalog, subject, int(wall_ms()))
        return self._build.change(subject, fallback, version)

    def _heartbeat_now(self, position: int) -> M:
        return self._heartbeat(position, self._hub.lag_ms(), int(wall_ms()))

    def _heartbeat(self, position: int, lag_ms: int, server_time_ms: int) -> M:
        """A heartbeat: the resume point, the server's clock (clients judge `valid_until` by
        it), the lag, and what the answers depend on: the change log and the catalog."""
        return self._build.heartbeat(
            position, lag_ms, server_time_ms, self._hub.log_id, self._catalog.fingerprint
        )


def _resume_points(changes: list[tuple[int, int, str]]) -> Iterator[tuple[int, str, int]]:
    """(txid, subject, version) per change; `version` is the point to resume from: the last
    change of a transaction points past it, the others at it (their siblings come again)."""
    for i, (txid, _version, subject) in enumerate(changes):
        last_of_tx = i + 1 == len(changes) or changes[i + 1][0] != txid
        yield txid, subject, txid + 1 if last_of_tx else txid
