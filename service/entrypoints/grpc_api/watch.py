"""WatchEntitlements streams over the replica's one change follower
(service/application/change_feed.py).

A stream subscribes first, then (when resuming) reads what it missed from the database up to
the follower's position, then takes the follower's batches from memory. Every message's
`version` is a resume point; a heartbeat (empty `subject`) goes out at least every second with
the server's time and the lag, so a client can tell a quiet stream from a stale one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import entitlement_service_pb2 as pb
from service.application.app import Application
from service.application.change_feed import Batch, Subscription, Tick, wall_ms
from service.application.reads import default_entitlements
from service.domain.errors import OutOfRange, ResourceExhausted
from service.domain.resolution import Entitlements
from service.entrypoints.message_limits import WATCH_MAX_SUBJECTS
from service.metrics import WATCH_MESSAGE_FAILURES

log = logging.getLogger(__name__)

CATCH_UP_BATCH = 500
LOG_REPLACED = (
    "the change log this stream followed was replaced (database wiped or restored); "
    "re-sync and watch without since_version"
)

ToMessage = Callable[[Entitlements], pb.GetEntitlementsResponse]


class WatchStreams:
    def __init__(
        self, app: Application, to_message: ToMessage, max_subjects: int = WATCH_MAX_SUBJECTS
    ) -> None:
        self._max_subjects = max_subjects
        self._hub = app.hub
        self._change_log = app.change_log
        self._reader = app.reads
        self._catalog = app.catalog
        self._fingerprint = app.catalog.fingerprint
        self._to_message = to_message

    def check_subject_count(self, count: int) -> None:
        """A stream names at most ENTITLEMENTS_WATCH_MAX_SUBJECTS subjects: each costs memory
        for as long as the stream lives (checked before anything per subject is built)."""
        if count > self._max_subjects:
            raise ResourceExhausted(
                f"at most {self._max_subjects} subjects per WatchEntitlements stream; "
                "watch every subject (none named) or split the list"
            )

    async def stream(
        self, subjects: Sequence[str] | None, since: int | None, peer: str, log_id: str = ""
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Messages from `since` (None: from now) on, until the caller goes away. `log_id`:
        the change log `since` was a position of (a resumed stream of another log is
        OUT_OF_RANGE: its positions mean nothing here)."""
        position = since
        await self._live_position()
        if since is not None and log_id and log_id != self._hub.log_id:
            raise OutOfRange(LOG_REPLACED)
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
                yield self._heartbeat_message(position)
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
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
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
                yield self._heartbeat_message(position)

    def _batch_messages(
        self, batch: Batch, subscription: Subscription, position: int
    ) -> list[pb.WatchEntitlementsResponse]:
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

    async def _loaded_messages(
        self, changes: list[tuple[int, int, str]]
    ) -> list[pb.WatchEntitlementsResponse]:
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

    def _message(
        self, subject: str, entitlements: Entitlements | None, version: int
    ) -> pb.WatchEntitlementsResponse:
        """One change's message; a subject's problem never ends every watcher's stream (it is
        logged, counted and sent with the default plan)."""
        if entitlements is not None:
            try:
                body = self._to_message(entitlements)
                return pb.WatchEntitlementsResponse(
                    subject=subject, entitlements=body, version=version
                )
            except Exception:  # broad on purpose: one subject's message never ends the stream
                log.exception("watch: cannot build the message for %s", subject)
        else:
            log.error("watch: no entitlements loaded for %s", subject)
        WATCH_MESSAGE_FAILURES.inc()
        body = self._to_message(default_entitlements(self._catalog, subject, int(wall_ms())))
        return pb.WatchEntitlementsResponse(subject=subject, entitlements=body, version=version)

    def _heartbeat_message(self, position: int) -> pb.WatchEntitlementsResponse:
        return self._heartbeat(position, self._hub.lag_ms(), int(wall_ms()))

    def _heartbeat(
        self, position: int, lag_ms: int, server_time_ms: int
    ) -> pb.WatchEntitlementsResponse:
        """A heartbeat: the resume point, the server's clock (clients judge `valid_until` by
        it), the lag, and what the answers depend on: the change log and the catalog."""
        now = Timestamp()
        now.FromMilliseconds(server_time_ms)
        lag = Duration()
        lag.FromMilliseconds(lag_ms)
        return pb.WatchEntitlementsResponse(
            subject="",
            version=position,
            server_time=now,
            lag=lag,
            log_id=self._hub.log_id,
            catalog_fingerprint=self._fingerprint,
        )


def _resume_points(changes: list[tuple[int, int, str]]) -> Iterator[tuple[int, str, int]]:
    """(txid, subject, version) per change; `version` is the point to resume from: the last
    change of a transaction points past it, the others at it (their siblings come again)."""
    for i, (txid, _version, subject) in enumerate(changes):
        last_of_tx = i + 1 == len(changes) or changes[i + 1][0] != txid
        yield txid, subject, txid + 1 if last_of_tx else txid
