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
from entitlements_client.answers import (
    Decision,
    LimitCheck,
    Limits,
    Snapshot,
    decision_from,
    limit_check,
)
from entitlements_client.core import (
    DEFAULT_MAX_STALENESS,
    LocalCache,
    Tls,
    channel_options,
    metadata,
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
        self, subject: str, limit: str, current_usage: int, requested: int = 1
    ) -> LimitCheck:
        return limit_check(await self.snapshot(subject), limit, current_usage, requested)

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
