"""WatchEntitlements streams over the replica's one change follower (service/changes.py).

A stream subscribes first, then (when resuming) reads what it missed from the database up to
the follower's position, then takes the follower's batches from memory. Every message's
`version` is a resume point; a heartbeat (empty `subject`) goes out at least every second with
the server's time and the lag, so a client can tell a quiet stream from a stale one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import entitlement_service_pb2 as pb
from service.changes import Batch, ChangeHub, Subscription, Tick
from service.domain.catalog import Catalog
from service.domain.resolution import Entitlements
from service.metrics import WATCH_MESSAGE_FAILURES
from service.reader import EntitlementReader, default_entitlements
from service.store.postgres import Store

log = logging.getLogger(__name__)

CATCH_UP_BATCH = 500

ToMessage = Callable[[Entitlements], pb.GetEntitlementsResponse]


class WatchStreams:
    def __init__(
        self,
        hub: ChangeHub,
        store: Store,
        reader: EntitlementReader,
        catalog: Catalog,
        to_message: ToMessage,
    ) -> None:
        self._hub = hub
        self._store = store
        self._reader = reader
        self._catalog = catalog
        self._to_message = to_message

    async def stream(
        self, subjects: Sequence[str] | None, since: int | None, peer: str
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Messages from `since` (None: from now) on, until the caller goes away."""
        position = since
        while True:  # once per (re)subscription: a stream that fell behind starts over here
            subscription = self._hub.subscribe(subjects, peer)
            try:
                live = await self._live_position()
                if position is None:
                    position = live
                else:
                    # A resuming stream reads up to the horizon now, not just the follower's
                    # position: everything committed before it asked comes before its first
                    # heartbeat (the follower's batches below that are skipped).
                    live = max(live, (await self._store.change_log_horizon())[0])
                while position < live:  # what it missed, from the database
                    changes, position = await self._store.changes_between(
                        position, live, subjects, CATCH_UP_BATCH
                    )
                    for message in await self._loaded_messages(changes):
                        yield message
                yield self._heartbeat_message(position)
                followed = [position]
                async for message in self._follow(subscription, followed):
                    yield message
                position = followed[0]
            finally:
                self._hub.unsubscribe(subscription)

    async def _live_position(self) -> int:
        await self._hub.started.wait()
        assert self._hub.position is not None
        return self._hub.position

    async def _follow(
        self, subscription: Subscription, at: list[int]
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Messages from the follower's batches and heartbeats, keeping the resume position in
        `at[0]`; ends when the stream's queue overflowed (it then re-reads the database)."""
        position = at[0]
        while not subscription.overflowed:
            item = await subscription.queue.get()
            if isinstance(item, Tick):
                # Everything queued before the tick has been sent: its position holds.
                position = at[0] = max(position, item.position)
                message = item.memo.get(position)
                if message is None:
                    message = item.memo[position] = _heartbeat(
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
        changes = batch.changes
        messages = []
        for i, (txid, _version, subject) in enumerate(changes):
            if txid < position or not subscription.wants(subject):
                continue
            last_of_tx = i + 1 == len(changes) or changes[i + 1][0] != txid
            key = (subject, last_of_tx, txid)
            message = batch.memo.get(key)
            if message is None:
                entitlements = batch.entitlements.get(subject)
                message = pb.WatchEntitlementsResponse(
                    subject=subject,
                    entitlements=self._safe_message(subject, entitlements),
                    version=txid + 1 if last_of_tx else txid,
                )
                batch.memo[key] = message
            messages.append(message)
        return messages

    async def _loaded_messages(
        self, changes: list[tuple[int, int, str]]
    ) -> list[pb.WatchEntitlementsResponse]:
        if not changes:
            return []
        entries = await self._reader.load(list({subject for _, _, subject in changes}))
        messages = []
        for i, (txid, _version, subject) in enumerate(changes):
            last_of_tx = i + 1 == len(changes) or changes[i + 1][0] != txid
            entry = entries.get(subject)
            messages.append(
                pb.WatchEntitlementsResponse(
                    subject=subject,
                    entitlements=self._safe_message(subject, entry.entitlements if entry else None),
                    version=txid + 1 if last_of_tx else txid,
                )
            )
        return messages

    def _safe_message(
        self, subject: str, entitlements: Entitlements | None
    ) -> pb.GetEntitlementsResponse:
        """One subject's message; its problem never ends every watcher's stream."""
        try:
            if entitlements is None:
                raise LookupError("not loaded")
            return self._to_message(entitlements)
        except Exception:
            WATCH_MESSAGE_FAILURES.inc()
            log.exception("watch: cannot build the message for %s", subject)
            return self._to_message(default_entitlements(self._catalog, subject))

    def _heartbeat_message(self, position: int) -> pb.WatchEntitlementsResponse:
        return _heartbeat(position, self._hub.lag_ms(), int(time.time() * 1000))


def _heartbeat(position: int, lag_ms: int, server_time_ms: int) -> pb.WatchEntitlementsResponse:
    now = Timestamp()
    now.FromMilliseconds(server_time_ms)
    lag = Duration()
    lag.FromMilliseconds(lag_ms)
    return pb.WatchEntitlementsResponse(subject="", version=position, server_time=now, lag=lag)
