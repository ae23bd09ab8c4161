"""Sending queued notifications: one worker per endpoint per replica, so a slow or failing
endpoint delays nobody else, and none of it runs on the request path.

A worker claims the oldest pending delivery of each subject (so each subject's changes arrive
in version order), under a lease that other replicas respect (FOR UPDATE SKIP LOCKED, then the
lease), sends them concurrently, and records each outcome: 2xx delivered; 410 disables the
endpoint; anything else (429, 5xx, a timeout, no connection) is retried after a capped,
jittered exponential backoff until the give-up time, then recorded as failed (re-sendable).
A replica killed mid-delivery loses nothing: the lease runs out and the delivery is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from service.application.failures import FailureRun
from service.application.notifications import backoff_seconds
from service.application.ports import NoOperatorEvents, OperatorEvents

log = logging.getLogger(__name__)

BATCH_ROUNDS = 4  # a claim takes this many rounds of `concurrency` requests


class Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"  # 410: the endpoint asked to be disabled


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    subject: str
    body: str
    attempts: int  # including the one about to be made


@dataclass(frozen=True)
class Settled:
    id: int
    outcome: Outcome
    status: int | None
    error: str | None
    retry_in_seconds: float


@dataclass(frozen=True)
class Attempt:
    """What one POST got: the HTTP status, or an error class (timeout, connection)."""

    status: int | None
    error: str | None = None


class Sender(Protocol):
    async def send(self, message_id: str, body: str) -> Attempt: ...

    async def close(self) -> None: ...


class DeliveryQueue(Protocol):
    async def claim(self, endpoint: str, limit: int, lease_seconds: float) -> list[Claimed]: ...

    async def settle(
        self, endpoint: str, settled: Sequence[Settled], give_up_seconds: float
    ) -> int: ...


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_seconds: float = 10.0
    max_backoff_seconds: float = 30.0
    give_up_seconds: float = 24 * 3600.0
    concurrency: int = 8
    poll_seconds: float = 1.0

    @property
    def batch(self) -> int:
        """Deliveries claimed at once (sent `concurrency` at a time)."""
        return self.concurrency * BATCH_ROUNDS

    @property
    def lease_seconds(self) -> float:
        """Longer than a claimed batch can take, so no two replicas send one delivery at once."""
        return self.timeout_seconds * BATCH_ROUNDS + 5.0


def outcome_of(attempt: Attempt) -> Outcome:
    if attempt.status is not None and 200 <= attempt.status < 300:
        return Outcome.DELIVERED
    if attempt.status == 410:
        return Outcome.GONE
    return Outcome.RETRY


class EndpointWorker:
    """Delivers one endpoint's queue until cancelled."""

    def __init__(
        self,
        endpoint: str,
        queue: DeliveryQueue,
        sender: Sender,
        policy: DeliveryPolicy,
        events: OperatorEvents | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._queue = queue
        self._sender = sender
        self._policy = policy
        self._events = events or NoOperatorEvents()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def _attempt(self, claimed: Claimed, slots: asyncio.Semaphore) -> Settled:
        async with slots:
            attempt = await self._sender.send(claimed.message_id, claimed.body)
        outcome = outcome_of(attempt)
        self._events.notification_attempt(outcome.value)
        delay = backoff_seconds(claimed.attempts, self._policy.max_backoff_seconds)
        return Settled(claimed.id, outcome, attempt.status, attempt.error, delay)

    async def step(self) -> int:
        """Claim, send and record one round; the number of attempts made."""
        claimed = await self._queue.claim(
            self.endpoint, self._policy.batch, self._policy.lease_seconds
        )
        if not claimed:
            return 0
        slots = asyncio.Semaphore(self._policy.concurrency)
        settled = await asyncio.gather(*(self._attempt(c, slots) for c in claimed))
        failed = await self._queue.settle(self.endpoint, settled, self._policy.give_up_seconds)
        if failed:
            self._events.notification_attempt("failed", failed)
            log.warning(
                "notifications: %d given up after %.0f s", failed, self._policy.give_up_seconds
            )
        if any(s.outcome is Outcome.GONE for s in settled):
            log.warning("notification endpoint answered 410 Gone: disabled")
        return len(settled)

    async def run(self) -> None:
        failures = FailureRun("notification delivery", log)  # no URL: it may hold a token
        try:
            while True:
                self._wake.clear()
                made = 0
                try:
                    made = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # broad on purpose: the worker must outlive any one round
                    failures.failed("could not claim, send or record a round")
                else:
                    failures.recovered()
                if made == 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._policy.poll_seconds):
                            await self._wake.wait()
        finally:
            await self._sender.close()
