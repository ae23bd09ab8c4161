"""The asyncio client; with `local_cache=True` a task follows WatchEntitlements."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import grpc
from grpc import aio

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_client.local import (
    Decision,
    LimitCheck,
    Limits,
    LocalCache,
    Snapshot,
    decision_from,
    limit_check,
    watch_request,
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
    ) -> None:
        self._channel = aio.insecure_channel(target)
        self._stub = pb_grpc.EntitlementServiceStub(self._channel)
        self._timeout = timeout
        self.cache = LocalCache(max_cached_subjects) if local_cache else None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.cache is not None and self._task is None:
            plans = await self._stub.ListPlans(pb.ListPlansRequest(), timeout=self._timeout)
            self.cache.features = frozenset(plans.features)
            self._task = asyncio.create_task(self._follow())

    async def can_use(self, subject: str, feature: str) -> bool:
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
            pb.CanUseRequest(subject=subject, feature=feature), timeout=self._timeout
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
            pb.GetEntitlementsRequest(subject=subject), timeout=self._timeout
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
        assert self.cache is not None
        backoff = 0.05
        while True:
            try:
                async for message in self._stub.WatchEntitlements(watch_request(self.cache)):
                    self.cache.apply(message)
                    backoff = 0.05
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    self.cache.reset()
                    continue
            self.cache.lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def wait_synced(self) -> None:
        """Until the local cache has caught up (wrap in `asyncio.timeout` to bound it)."""
        while self.cache is None or not self.cache.synced:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
