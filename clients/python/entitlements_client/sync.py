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
    connect,
    metadata,
)


class EntitlementsClient:
    """`can_use` / `get_limits` / `check_limit` over gRPC, optionally answered in-process."""

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
        self, subject: str, limit: str, current_usage: int, requested: int = 1
    ) -> LimitCheck:
        return limit_check(self.snapshot(subject), limit, current_usage, requested)

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
