"""The asyncio client: awaiting I/O around _base.py's decisions. With `local_cache=True`,
`await start()` (or `async with`) starts a task that follows WatchEntitlements and a watchdog
task that restarts the stream when it falls silent; `on_change` runs in the former."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from entitlements_client._answers import Decision, LimitCheck, Limits, Snapshot
from entitlements_client._base import (
    FIRST_BACKOFF,
    WATCHDOG_PERIOD,
    BaseClient,
    Op,
    T,
)
from entitlements_client._cache import DEFAULT_MAX_STALENESS
from entitlements_client._config import Tls, channel_options
from entitlements_client._errors import EntitlementsError
from entitlements_client._usage import Consumption, Reservation, Settlement, Usage, UsageReport


class AsyncEntitlementsClient(BaseClient):
    """`EntitlementsClient`'s methods as coroutines, with the same arguments, answers and
    exceptions. Use as `async with AsyncEntitlementsClient(target, local_cache=True) as c:`.

    `on_change(subject, snapshot)`: called in the event loop, in the watch task, for each
    change the stream brings into the local cache; a coroutine function is awaited there
    (the next message waits for it: keep it short, or start a task of your own). An exception
    in it is logged, not raised."""

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
        on_change: Callable[[str, Snapshot], Awaitable[object] | object] | None = None,
    ) -> None:
        options = channel_options()
        self._channel = (
            aio.secure_channel(target, tls.credentials(), options=options)
            if tls is not None
            else aio.insecure_channel(target, options=options)
        )
        super().__init__(
            self._channel,
            local_cache=local_cache,
            timeout=timeout,
            max_cached_subjects=max_cached_subjects,
            max_staleness=max_staleness,
            token=token,
            on_change=on_change,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stream: Any = None

    async def _run(self, op: Op[T]) -> T:
        """Drive an operation with awaited calls."""
        try:
            rpc = next(op)
            while True:
                try:
                    response = await self._send(rpc)
                except grpc.RpcError as exc:
                    raise self._error(exc) from exc
                rpc = op.send(response)
        except StopIteration as done:
            result: T = done.value
            return result

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the catalog's features and start following the watch stream (local cache
        only; a no-op otherwise, and when started already)."""
        if await self._run(self._start_op()):
            self._tasks = [
                asyncio.create_task(self._follow()),
                asyncio.create_task(self._watchdog()),
            ]

    async def wait_synced(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 (the sync one's)
        """Wait until local answers may be given; False after `timeout` seconds (and at once
        without a local cache, which never syncs)."""
        if self.cache is None:
            return False
        self._must_be_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.synced:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

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

    # ---- checks ------------------------------------------------------------------------------

    async def can_use(self, subject: str, feature: str) -> bool:
        """May `subject` use `feature`? Answered locally while the cache is fresh enough, else
        by the service; an unknown feature raises `InvalidArgument` either way."""
        local = self._local_can_use(subject, feature)
        return local if local is not None else await self._run(self._can_use_op(subject, feature))

    async def check(self, subject: str, feature: str) -> Decision:
        """The full CanUse answer (always an RPC, so the reason is the server's)."""
        return await self._run(self._check_op(subject, feature))

    async def snapshot(self, subject: str) -> Snapshot:
        """The subject's resolved entitlements (local when fresh, else by RPC)."""
        local = self._local_snapshot(subject)
        return local if local is not None else await self._run(self._snapshot_op(subject))

    async def get_limits(self, subject: str) -> Limits:
        snap = self._local_snapshot(subject)
        if snap is not None:
            return Limits(snap.plan, snap.limits)
        return await self._run(self._get_limits_op(subject))

    async def check_limit(
        self, subject: str, limit: str, current_usage: int = 0, requested: int = 1
    ) -> LimitCheck:
        """As `EntitlementsClient.check_limit`."""
        local = self._local_check_limit(subject, limit, current_usage, requested)
        if local is not None:
            return local
        return await self._run(self._check_limit_op(subject, limit, current_usage, requested))

    # ---- metered usage (always the service; see _usage.py) ----------------------------------

    async def consume(
        self, subject: str, limit: str, amount: int = 1, idempotency_key: str | None = None
    ) -> Consumption:
        """As `EntitlementsClient.consume` (retrying callers pass their own key)."""
        return await self._run(self._consume_op(subject, limit, amount, idempotency_key))

    async def report_usage(
        self,
        subject: str,
        limit: str,
        delta: int | None = None,
        set: int | None = None,
        idempotency_key: str | None = None,
    ) -> UsageReport:
        """As `EntitlementsClient.report_usage`."""
        return await self._run(self._report_usage_op(subject, limit, delta, set, idempotency_key))

    async def reserve(
        self,
        subject: str,
        limit: str,
        amount: int,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """As `EntitlementsClient.reserve`."""
        return await self._run(
            self._reserve_op(subject, limit, amount, ttl_seconds, idempotency_key)
        )

    async def commit(self, reservation_id: str, amount: int) -> Settlement:
        return await self._run(self._commit_op(reservation_id, amount))

    async def release(self, reservation_id: str) -> Settlement:
        return await self._run(self._release_op(reservation_id))

    async def get_usage(self, subject: str) -> Usage:
        return await self._run(self._get_usage_op(subject))

    # ---- the watch (tasks) -------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            error: Exception | None = None
            try:
                stream = self._stream = self._open_watch()
                async for message in stream:
                    changed = self._on_message(message)
                    if changed is not None:
                        await self._notify(changed)
                    await self._run(self._catalog_op())
                    backoff = FIRST_BACKOFF
            except (grpc.RpcError, EntitlementsError) as exc:
                error = exc
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the client is closing
                # else: the watchdog cancelled a silent stream
            if self._on_stream_end(error):
                continue
            await asyncio.sleep(backoff)
            backoff = self._next_backoff(backoff)

    async def _notify(self, snap: Snapshot) -> None:
        assert self._on_change is not None
        try:
            outcome = self._on_change(snap.subject, snap)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # broad on purpose: the app's callback must not stop the watch
            self._callback_failed(snap.subject)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD)
            stream = self._stream
            if self._silent_stream(stream):
                stream.cancel()  # _follow starts a new one, resuming where it was
