"""The synchronous client; with `local_cache=True` a daemon thread follows WatchEntitlements
(and a watchdog restarts the stream when it falls silent)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import grpc

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from entitlements_client.answers import (
    Decision,
    LimitCheck,
    Limits,
    Snapshot,
    decision_from,
    limit_check_from,
)
from entitlements_client.core import (
    DEFAULT_MAX_STALENESS,
    LocalCache,
    Tls,
    connect,
    metadata,
)
from entitlements_client.usage import (
    Consumption,
    Reservation,
    Settlement,
    Usage,
    UsageReport,
    commit_request,
    consume_request,
    release_request,
    report_request,
    reserve_request,
)


class EntitlementsClient:
    """`can_use` / `get_limits` / `check_limit` over gRPC, optionally answered in-process;
    metered usage (`consume`, `report_usage`, `reserve`, `commit`, `release`, `get_usage`)
    always by the service."""

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
    ) -> None:
        self._channel = connect(target, tls)
        self._stub = pb_grpc.EntitlementServiceStub(self._channel)
        self._usage = usage_grpc.UsageServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = metadata(token)
        self._closed = threading.Event()
        self.cache: LocalCache | None = None
        self._threads: list[threading.Thread] = []
        self._stream: Any = None
        if local_cache:
            self.cache = LocalCache(max_cached_subjects, max_staleness)
            plans = self._stub.ListPlans(
                pb.ListPlansRequest(), timeout=timeout, metadata=self._metadata
            )
            self.cache.plans_loaded(plans)
            for name, target_fn in (("watch", self._follow), ("watchdog", self._watchdog)):
                thread = threading.Thread(
                    target=target_fn, name=f"entitlements-{name}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    @property
    def synced(self) -> bool:
        """True only while a local answer cannot be older than `max_staleness`."""
        return self.cache is not None and self.cache.synced

    # ---- checks ------------------------------------------------------------------------

    def can_use(self, subject: str, feature: str) -> bool:
        """May `subject` use `feature`? Answered locally while the cache is fresh enough;
        otherwise by the service (a gRPC error is raised if it cannot answer)."""
        cache = self.cache
        if cache is not None:
            snap = cache.fresh(subject)
            if snap is None and cache.synced:
                snap = self.snapshot(subject)  # one RPC; cached for the next check
            if snap is not None:
                return cache.decide(snap, feature)
        return self.check(subject, feature).allowed

    def check(self, subject: str, feature: str) -> Decision:
        """The full CanUse answer (always an RPC, so the reason is the server's)."""
        response = self._stub.CanUse(
            pb.CanUseRequest(subject=subject, feature=feature),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return decision_from(response)

    def snapshot(self, subject: str) -> Snapshot:
        cache = self.cache
        generation = 0
        if cache is not None:
            snap = cache.fresh(subject)
            if snap is not None:
                return snap
            generation = cache.generation
        response = self._stub.GetEntitlements(
            pb.GetEntitlementsRequest(subject=subject),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        snap = Snapshot.from_message(response)
        if cache is not None:
            cache.put_from_rpc(snap, generation)
        return snap

    def get_limits(self, subject: str) -> Limits:
        snap = self.snapshot(subject)
        return Limits(snap.plan, snap.limits)

    def check_limit(
        self, subject: str, limit: str, current_usage: int = 0, requested: int = 1
    ) -> LimitCheck:
        """Do `requested` more units fit? A limit the service does not meter is answered
        locally while the cache is fresh enough (`current_usage` is the caller's count); a
        metered one always by the service, which counts its usage itself (`current_usage` 0)."""
        cache = self.cache
        if cache is not None and limit not in cache.metered:
            snap = cache.fresh(subject)
            if snap is None and cache.synced:
                snap = self.snapshot(subject)  # one RPC; cached for the next check
            if snap is not None:
                answer = cache.limit_answer(snap, limit, current_usage, requested)
                if answer is not None:
                    return answer
        response = self._stub.CheckLimit(
            pb.CheckLimitRequest(
                subject=subject, limit=limit, current_usage=current_usage, requested=requested
            ),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return limit_check_from(response)

    # ---- metered usage (always the service; see entitlements_client.usage) ---------------

    def consume(
        self, subject: str, limit: str, amount: int = 1, idempotency_key: str | None = None
    ) -> Consumption:
        """Record `amount` units of a metered limit when they fit (atomic), else nothing.
        Without `idempotency_key` a random one is used: a caller that retries must pass its
        own, the same on every attempt, or a retried call may be counted twice."""
        request = consume_request(subject, limit, amount, idempotency_key)
        response = self._usage.Consume(request, timeout=self._timeout, metadata=self._metadata)
        return Consumption.from_message(response)

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
        request = report_request(subject, limit, delta, set, idempotency_key)
        response = self._usage.ReportUsage(request, timeout=self._timeout, metadata=self._metadata)
        return UsageReport.from_message(response)

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
        request = reserve_request(subject, limit, amount, ttl_seconds, idempotency_key)
        response = self._usage.Reserve(request, timeout=self._timeout, metadata=self._metadata)
        return Reservation.from_message(response)

    def commit(self, reservation_id: str, amount: int) -> Settlement:
        """Record the actual `amount` (at most the reserved one) and end the reservation."""
        response = self._usage.CommitReservation(
            commit_request(reservation_id, amount), timeout=self._timeout, metadata=self._metadata
        )
        return Settlement.from_message(response)

    def release(self, reservation_id: str) -> Settlement:
        """Give a reservation's units back."""
        response = self._usage.ReleaseReservation(
            release_request(reservation_id), timeout=self._timeout, metadata=self._metadata
        )
        return Settlement.from_message(response)

    def get_usage(self, subject: str) -> Usage:
        """Every metered limit's usage in its current period."""
        response = self._usage.GetUsage(
            usage_pb.GetUsageRequest(subject=subject),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return Usage.from_message(response)

    # ---- the watch -----------------------------------------------------------------------

    def _follow(self) -> None:
        cache = self.cache
        assert cache is not None
        backoff = 0.05
        while not self._closed.is_set():
            try:
                stream = self._stub.WatchEntitlements(
                    cache.watch_request(), metadata=self._metadata
                )
                self._stream = stream
                cache.stream_started()
                for message in stream:
                    cache.apply(message)
                    if cache.catalog_stale:  # the service's catalog changed: read it again
                        cache.plans_loaded(
                            self._stub.ListPlans(
                                pb.ListPlansRequest(),
                                timeout=self._timeout,
                                metadata=self._metadata,
                            )
                        )
                    backoff = 0.05
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    cache.reset()
                    continue
            cache.lost()
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _watchdog(self) -> None:
        cache = self.cache
        assert cache is not None
        while not self._closed.wait(0.25):
            stream = self._stream
            if stream is not None and cache.silent_too_long():
                cache.lost()
                stream.cancel()  # _follow starts a new one, resuming where it was

    def wait_synced(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._closed.set()
        if self._stream is not None:
            self._stream.cancel()
        self._channel.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> EntitlementsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
