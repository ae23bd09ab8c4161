"""The asyncio client; with `local_cache=True` a task follows WatchEntitlements (and a
watchdog task restarts the stream when it falls silent)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

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
    channel_options,
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


class AsyncEntitlementsClient:
    """Use as `async with AsyncEntitlementsClient(target, local_cache=True) as client:`."""

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
        options = channel_options()
        self._channel = (
            aio.secure_channel(target, tls.credentials(), options=options)
            if tls is not None
            else aio.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.EntitlementServiceStub(self._channel)
        self._usage = usage_grpc.UsageServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = metadata(token)
        self.cache = LocalCache(max_cached_subjects, max_staleness) if local_cache else None
        self._tasks: list[asyncio.Task[None]] = []
        self._stream: Any = None

    @property
    def synced(self) -> bool:
        """True only while a local answer cannot be older than `max_staleness`."""
        return self.cache is not None and self.cache.synced

    async def start(self) -> None:
        if self.cache is not None and not self._tasks:
            plans = await self._stub.ListPlans(
                pb.ListPlansRequest(), timeout=self._timeout, metadata=self._metadata
            )
            self.cache.plans_loaded(plans)
            self._tasks = [
                asyncio.create_task(self._follow()),
                asyncio.create_task(self._watchdog()),
            ]

    async def can_use(self, subject: str, feature: str) -> bool:
        """May `subject` use `feature`? Answered locally while the cache is fresh enough;
        otherwise by the service (a gRPC error is raised if it cannot answer)."""
        cache = self.cache
        if cache is not None:
            snap = cache.fresh(subject)
            if snap is None and cache.synced:
                snap = await self.snapshot(subject)  # one RPC; cached for the next check
            if snap is not None:
                return cache.decide(snap, feature)
        return (await self.check(subject, feature)).allowed

    async def check(self, subject: str, feature: str) -> Decision:
        response = await self._stub.CanUse(
            pb.CanUseRequest(subject=subject, feature=feature),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return decision_from(response)

    async def snapshot(self, subject: str) -> Snapshot:
        cache = self.cache
        generation = 0
        if cache is not None:
            snap = cache.fresh(subject)
            if snap is not None:
                return snap
            generation = cache.generation
        response = await self._stub.GetEntitlements(
            pb.GetEntitlementsRequest(subject=subject),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        snap = Snapshot.from_message(response)
        if cache is not None:
            cache.put_from_rpc(snap, generation)
        return snap

    async def get_limits(self, subject: str) -> Limits:
        snap = await self.snapshot(subject)
        return Limits(snap.plan, snap.limits)

    async def check_limit(
        self, subject: str, limit: str, current_usage: int = 0, requested: int = 1
    ) -> LimitCheck:
        """Do `requested` more units fit? A limit the service does not meter is answered
        locally while the cache is fresh enough (`current_usage` is the caller's count); a
        metered one always by the service, which counts its usage itself (`current_usage` 0)."""
        cache = self.cache
        if cache is not None and limit not in cache.metered:
            snap = cache.fresh(subject)
            if snap is None and cache.synced:
                snap = await self.snapshot(subject)  # one RPC; cached for the next check
            if snap is not None:
                answer = cache.limit_answer(snap, limit, current_usage, requested)
                if answer is not None:
                    return answer
        response = await self._stub.CheckLimit(
            pb.CheckLimitRequest(
                subject=subject, limit=limit, current_usage=current_usage, requested=requested
            ),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return limit_check_from(response)

    # ---- metered usage (always the service; see entitlements_client.usage) ---------------

    async def consume(
        self, subject: str, limit: str, amount: int = 1, idempotency_key: str | None = None
    ) -> Consumption:
        """Record `amount` units of a metered limit when they fit (atomic), else nothing.
        Without `idempotency_key` a random one is used: a caller that retries must pass its
        own, the same on every attempt, or a retried call may be counted twice."""
        request = consume_request(subject, limit, amount, idempotency_key)
        response = await self._usage.Consume(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return Consumption.from_message(response)

    async def report_usage(
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
        response = await self._usage.ReportUsage(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return UsageReport.from_message(response)

    async def reserve(
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
        response = await self._usage.Reserve(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return Reservation.from_message(response)

    async def commit(self, reservation_id: str, amount: int) -> Settlement:
        """Record the actual `amount` (at most the reserved one) and end the reservation."""
        response = await self._usage.CommitReservation(
            commit_request(reservation_id, amount), timeout=self._timeout, metadata=self._metadata
        )
        return Settlement.from_message(response)

    async def release(self, reservation_id: str) -> Settlement:
        """Give a reservation's units back."""
        response = await self._usage.ReleaseReservation(
            release_request(reservation_id), timeout=self._timeout, metadata=self._metadata
        )
        return Settlement.from_message(response)

    async def get_usage(self, subject: str) -> Usage:
        """Every metered limit's usage in its current period."""
        response = await self._usage.GetUsage(
            usage_pb.GetUsageRequest(subject=subject),
            timeout=self._timeout,
            metadata=self._metadata,
        )
        return Usage.from_message(response)

    async def _follow(self) -> None:
        cache = self.cache
        assert cache is not None
        backoff = 0.05
        while True:
            try:
                stream = self._stub.WatchEntitlements(
                    cache.watch_request(), metadata=self._metadata
                )
                self._stream = stream
                cache.stream_started()
                async for message in stream:
                    cache.apply(message)
                    if cache.catalog_stale:  # the service's catalog changed: read it again
                        cache.plans_loaded(
                            await self._stub.ListPlans(
                                pb.ListPlansRequest(),
                                timeout=self._timeout,
                                metadata=self._metadata,
                            )
                        )
                    backoff = 0.05
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    cache.reset()
                    continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the client is closing
                # else: the watchdog cancelled a silent stream
            cache.lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _watchdog(self) -> None:
        cache = self.cache
        assert cache is not None
        while True:
            await asyncio.sleep(0.25)
            stream = self._stream
            if stream is not None and cache.silent_too_long():
                cache.lost()
                stream.cancel()  # _follow starts a new one, resuming where it was

    async def wait_synced(self) -> None:
        """Until the local cache has caught up (wrap in `asyncio.timeout` to bound it)."""
        while not self.synced:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._channel.close()

    async def __aenter__(self) -> AsyncEntitlementsClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
