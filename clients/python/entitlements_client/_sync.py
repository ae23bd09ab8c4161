"""The synchronous client: blocking I/O around _base.py's decisions. With `local_cache=True`,
`start()` (or `with`) starts a daemon thread that follows WatchEntitlements and a watchdog
thread that restarts the stream when it falls silent; `on_change` is called on the former."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc

from entitlements_client._answers import Decision, LimitCheck, Limits, Snapshot
from entitlements_client._base import (
    FIRST_BACKOFF,
    WATCHDOG_PERIOD,
    BaseClient,
    Op,
    T,
)
from entitlements_client._cache import DEFAULT_MAX_STALENESS
from entitlements_client._config import Tls, connect
from entitlements_client._errors import EntitlementsError
from entitlements_client._usage import Consumption, Reservation, Settlement, Usage, UsageReport


class EntitlementsClient(BaseClient):
    """`can_use` / `get_limits` / `check_limit` over gRPC, answered in-process while a local
    cache (`local_cache=True`) is fresh enough; metered usage (`consume`, `report_usage`,
    `reserve`, `commit`, `release`, `get_usage`) always by the service. Every failure raises an
    `EntitlementsError` subclass, the same whether the local cache or the service refused.

    `on_change(subject, snapshot)`: called on the watch thread for each change the stream
    brings into the local cache (keep it short; an exception in it is logged, not raised)."""

    def __init__(
        self,
        target: str,
        *,
        local_cache: bool = False,
        timeout: float = 2.0,
        max_cached_subjects: int = 100_000,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        tls: Tls | None = None,
        token: str | None = None,
        on_change: Callable[[str, Snapshot], object] | None = None,
    ) -> None:
        self._channel = connect(target, tls)
        super().__init__(
            self._channel,
            local_cache=local_cache,
            timeout=timeout,
            max_cached_subjects=max_cached_subjects,
            max_staleness=max_staleness,
            token=token,
            on_change=on_change,
        )
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: Any = None

    def _run(self, op: Op[T]) -> T:
        """Drive an operation with blocking calls."""
        try:
            rpc = next(op)
            while True:
                try:
                    response = self._send(rpc)
                except grpc.RpcError as exc:
                    raise self._error(exc) from exc
                rpc = op.send(response)
        except StopIteration as done:
            result: T = done.value
            return result

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the catalog's features and start following the watch stream (local cache
        only; a no-op otherwise, and when started already)."""
        if self._run(self._start_op()):
            for name, body in (("watch", self._follow), ("watchdog", self._watchdog)):
                thread = threading.Thread(target=body, name=f"entitlements-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def wait_synced(self, timeout: float = 10.0) -> bool:
        """Wait until local answers may be given; False after `timeout` seconds (and at once
        without a local cache, which never syncs)."""
        if self.cache is None:
            return False
        self._must_be_started()
        deadline = time.monotonic() + timeout
        while not self.synced:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self._closed.set()
        if self._stream is not None:
            self._stream.cancel()
        self._channel.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> EntitlementsClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- checks ------------------------------------------------------------------------------

    def can_use(self, subject: str, feature: str) -> bool:
        """May `subject` use `feature`? Answered locally while the cache is fresh enough, else
        by the service; an unknown feature raises `InvalidArgument` either way."""
        local = self._local_can_use(subject, feature)
        return local if local is not None else self._run(self._can_use_op(subject, feature))

    def check(self, subject: str, feature: str) -> Decision:
        """The full CanUse answer (always an RPC, so the reason is the server's)."""
        return self._run(self._check_op(subject, feature))

    def snapshot(self, subject: str) -> Snapshot:
        """The subject's resolved entitlements (local when fresh, else by RPC)."""
        local = self._local_snapshot(subject)
        return local if local is not None else self._run(self._snapshot_op(subject))

    def get_limits(self, subject: str) -> Limits:
        snap = self._local_snapshot(subject)
        if snap is not None:
            return Limits(snap.plan, snap.limits)
        return self._run(self._get_limits_op(subject))

    def check_limit(
        self, subject: str, limit: str, current_usage: int = 0, requested: int = 1
    ) -> LimitCheck:
        """Do `requested` more units fit? A limit the service does not meter is answered
        locally while the cache is fresh enough (`current_usage` is the caller's count); a
        metered one always by the service, which counts its usage itself (`current_usage` 0)."""
        local = self._local_check_limit(subject, limit, current_usage, requested)
        if local is not None:
            return local
        return self._run(self._check_limit_op(subject, limit, current_usage, requested))

    # ---- metered usage (always the service; see _usage.py) ----------------------------------

    def consume(
        self, subject: str, limit: str, amount: int = 1, idempotency_key: str | None = None
    ) -> Consumption:
        """Record `amount` units of a metered limit when they fit (atomic), else nothing.
        Without `idempotency_key` a random one is used: a caller that retries must pass its
        own, the same on every attempt, or a retried call may be counted twice."""
        return self._run(self._consume_op(subject, limit, amount, idempotency_key))

    def report_usage(
        self,
        subject: str,
        limit: str,
        delta: int | None = None,
        set: int | None = None,
        idempotency_key: str | None = None,
    ) -> UsageReport:
        """Record usage without a check: add `delta`, or `set` the period's total (one of
        them). Retrying callers pass their own `idempotency_key`, as for `consume`."""
        return self._run(self._report_usage_op(subject, limit, delta, set, idempotency_key))

    def reserve(
        self,
        subject: str,
        limit: str,
        amount: int,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold `amount` units (counted as used) until `commit`, `release` or the TTL
        (0: the service's default). Retrying callers pass their own `idempotency_key`."""
        return self._run(self._reserve_op(subject, limit, amount, ttl_seconds, idempotency_key))

    def commit(self, reservation_id: str, amount: int) -> Settlement:
        """Record the actual `amount` (at most the reserved one) and end the reservation."""
        return self._run(self._commit_op(reservation_id, amount))

    def release(self, reservation_id: str) -> Settlement:
        """Give a reservation's units back."""
        return self._run(self._release_op(reservation_id))

    def get_usage(self, subject: str) -> Usage:
        """Every metered limit's usage in its current period."""
        return self._run(self._get_usage_op(subject))

    # ---- the watch (threads) -----------------------------------------------------------------

    def _follow(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._closed.is_set():
            error: Exception | None = None
            try:
                stream = self._stream = self._open_watch()
                for message in stream:
                    changed = self._on_message(message)
                    if changed is not None:
                        self._notify(changed)
                    self._run(self._catalog_op())
                    backoff = FIRST_BACKOFF
            except (grpc.RpcError, EntitlementsError) as exc:
                error = exc
            if self._on_stream_end(error):
                continue
            self._closed.wait(backoff)
            backoff = self._next_backoff(backoff)

    def _notify(self, snap: Snapshot) -> None:
        assert self._on_change is not None
        try:
            self._on_change(snap.subject, snap)
        except Exception:  # broad on purpose: the app's callback must not stop the watch
            self._callback_failed(snap.subject)

    def _watchdog(self) -> None:
        while not self._closed.wait(WATCHDOG_PERIOD):
            stream = self._stream
            if self._silent_stream(stream):
                stream.cancel()  # _follow starts a new one, resuming where it was
