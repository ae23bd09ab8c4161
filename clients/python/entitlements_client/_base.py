"""Every decision the sync and async clients make, in one base class (as httpx's `BaseClient`):
which request a call sends, whether the local cache answers it, how an answer is converted,
what a watch message or a broken stream means. The two subclasses (_sync.py, _aio.py) only do
I/O, so they cannot drift apart in behaviour.

A call is an *operation*: a generator that yields the RPCs it needs (`Rpc`) and is sent their
responses, returning the answer. The sync client drives it with blocking calls, the async one
with awaits; both turn a failed RPC into the library's exception with `error_from_rpc`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from entitlements_client._answers import (
    Decision,
    LimitCheck,
    Limits,
    Snapshot,
    decision_from,
    limit_check_from,
)
from entitlements_client._cache import LocalCache
from entitlements_client._config import metadata
from entitlements_client._errors import EntitlementsError, OutOfRange, error_from_rpc
from entitlements_client._usage import (
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

T = TypeVar("T")
log = logging.getLogger("entitlements_client")

FIRST_BACKOFF = 0.05
MAX_BACKOFF = 2.0
WATCHDOG_PERIOD = 0.25
_ENTITLEMENT_RPCS = ("CanUse", "GetEntitlements", "CheckLimit", "ListPlans")
_USAGE_RPCS = (
    "Consume",
    "ReportUsage",
    "Reserve",
    "CommitReservation",
    "ReleaseReservation",
    "GetUsage",
)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[T]):
    """One unary call an operation needs: the method's name and its request."""

    method: str
    request: Message


# An operation: yields the RPCs it needs, is sent each one's response, returns the answer.
Op = Generator[Rpc[Any], Any, T]


def _rpc(method: str, request: Message) -> Generator[Rpc[Any], Any, Any]:
    response = yield Rpc(method, request)
    return response


class BaseClient:
    """Settings, the local cache and every operation; subclasses run them (blocking or async).

    `on_change(subject, snapshot)` is called for each change the watch stream brings into the
    local cache (never for a subject's first RPC answer, nor for heartbeats)."""

    def __init__(
        self,
        channel: Any,
        *,
        local_cache: bool,
        timeout: float,
        max_cached_subjects: int,
        max_staleness: float,
        token: str | None,
        on_change: Callable[[str, Snapshot], Any] | None,
    ) -> None:
        self._timeout = timeout
        self._metadata = metadata(token)
        self.cache = LocalCache(max_cached_subjects, max_staleness) if local_cache else None
        self._on_change = on_change
        self._started = False
        entitlements = pb_grpc.EntitlementServiceStub(channel)
        usage = usage_grpc.UsageServiceStub(channel)
        self._rpcs: dict[str, Any] = {n: getattr(entitlements, n) for n in _ENTITLEMENT_RPCS}
        self._rpcs.update({n: getattr(usage, n) for n in _USAGE_RPCS})
        self._watch_rpc = entitlements.WatchEntitlements

    @property
    def synced(self) -> bool:
        """True only while a local answer cannot be older than `max_staleness`."""
        return self.cache is not None and self.cache.synced

    # ---- I/O helpers the subclasses share --------------------------------------------------

    def _send(self, rpc: Rpc[Any]) -> Any:
        """Start `rpc` on its stub (blocking: the response; async: an awaitable of it)."""
        return self._rpcs[rpc.method](rpc.request, timeout=self._timeout, metadata=self._metadata)

    @staticmethod
    def _error(exc: grpc.RpcError) -> EntitlementsError:
        return error_from_rpc(exc)

    def _must_be_started(self) -> None:
        if self.cache is not None and not self._started:
            raise RuntimeError(
                "the client is not started: call start() or use it as a context manager"
            )

    # ---- operations: checks ----------------------------------------------------------------

    def _local_can_use(self, subject: str, feature: str) -> bool | None:
        """The hot path: the local answer when the cache holds a fresh one, else None."""
        cache = self.cache
        if cache is None:
            return None
        snap = cache.fresh(subject)
        return None if snap is None else cache.decide(snap, feature)

    def _local_check_limit(
        self, subject: str, limit: str, current_usage: int, requested: int
    ) -> LimitCheck | None:
        """The hot path of a limit check: the local answer, else None (see `_check_limit_op`)."""
        cache = self.cache
        if cache is None or limit in cache.metered:
            return None
        snap = cache.fresh(subject)
        return None if snap is None else cache.limit_answer(snap, limit, current_usage, requested)

    def _local_snapshot(self, subject: str) -> Snapshot | None:
        return None if self.cache is None else self.cache.fresh(subject)

    def _can_use_op(self, subject: str, feature: str) -> Op[bool]:
        cache = self.cache
        if cache is not None and cache.synced:
            snap = yield from self._snapshot_op(subject)  # one RPC; cached for the next check
            return cache.decide(snap, feature)
        decision = yield from self._check_op(subject, feature)
        return decision.allowed

    def _check_op(self, subject: str, feature: str) -> Op[Decision]:
        request = pb.CanUseRequest(subject=subject, feature=feature)
        return decision_from((yield from _rpc("CanUse", request)))

    def _snapshot_op(self, subject: str) -> Op[Snapshot]:
        cache = self.cache
        generation = 0
        if cache is not None:
            snap = cache.fresh(subject)
            if snap is not None:
                return snap
            generation = cache.generation
        request = pb.GetEntitlementsRequest(subject=subject)
        snap = Snapshot.from_message((yield from _rpc("GetEntitlements", request)))
        if cache is not None:
            cache.put_from_rpc(snap, generation)
        return snap

    def _get_limits_op(self, subject: str) -> Op[Limits]:
        snap = yield from self._snapshot_op(subject)
        return Limits(snap.plan, snap.limits)

    def _check_limit_op(
        self, subject: str, limit: str, current_usage: int, requested: int
    ) -> Op[LimitCheck]:
        cache = self.cache
        if cache is not None and limit not in cache.metered:
            snap = cache.fresh(subject)
            if snap is None and cache.synced:
                snap = yield from self._snapshot_op(subject)  # one RPC; cached for the next
            if snap is not None:
                answer = cache.limit_answer(snap, limit, current_usage, requested)
                if answer is not None:
                    return answer
        request = pb.CheckLimitRequest(
            subject=subject, limit=limit, current_usage=current_usage, requested=requested
        )
        return limit_check_from((yield from _rpc("CheckLimit", request)))

    # ---- operations: metered usage (always the service) ------------------------------------

    def _consume_op(
        self, subject: str, limit: str, amount: int, idempotency_key: str | None
    ) -> Op[Consumption]:
        request = consume_request(subject, limit, amount, idempotency_key)
        return Consumption.from_message((yield from _rpc("Consume", request)))

    def _report_usage_op(
        self,
        subject: str,
        limit: str,
        delta: int | None,
        total: int | None,
        idempotency_key: str | None,
    ) -> Op[UsageReport]:
        request = report_request(subject, limit, delta, total, idempotency_key)
        return UsageReport.from_message((yield from _rpc("ReportUsage", request)))

    def _reserve_op(
        self, subject: str, limit: str, amount: int, ttl_seconds: int, idempotency_key: str | None
    ) -> Op[Reservation]:
        request = reserve_request(subject, limit, amount, ttl_seconds, idempotency_key)
        return Reservation.from_message((yield from _rpc("Reserve", request)))

    def _commit_op(self, reservation_id: str, amount: int) -> Op[Settlement]:
        request = commit_request(reservation_id, amount)
        return Settlement.from_message((yield from _rpc("CommitReservation", request)))

    def _release_op(self, reservation_id: str) -> Op[Settlement]:
        request = release_request(reservation_id)
        return Settlement.from_message((yield from _rpc("ReleaseReservation", request)))

    def _get_usage_op(self, subject: str) -> Op[Usage]:
        request = usage_pb.GetUsageRequest(subject=subject)
        return Usage.from_message((yield from _rpc("GetUsage", request)))

    # ---- the watch ---------------------------------------------------------------------------

    def _load_plans_op(self) -> Op[None]:
        """ListPlans into the cache: the features a check may name, the catalog's identity."""
        assert self.cache is not None
        self.cache.plans_loaded((yield from _rpc("ListPlans", pb.ListPlansRequest())))

    def _start_op(self) -> Op[bool]:
        """What `start()` does before the watch begins; True when there is a watch to begin."""
        if self.cache is None or self._started:
            return False
        yield from self._load_plans_op()
        self._started = True
        return True

    def _open_watch(self) -> Any:
        """A new WatchEntitlements stream, resuming where the cache left off."""
        assert self.cache is not None
        stream = self._watch_rpc(self.cache.watch_request(), metadata=self._metadata)
        self.cache.stream_started()
        return stream

    def _on_message(self, message: pb.WatchEntitlementsResponse) -> Snapshot | None:
        """One stream message into the cache; the changed snapshot when `on_change` is to
        hear of it."""
        assert self.cache is not None
        snap = self.cache.apply(message)
        return snap if self._on_change is not None else None

    def _catalog_op(self) -> Op[None]:
        """After a message: read the catalog again when the stream showed another one."""
        if self.cache is not None and self.cache.catalog_stale:
            yield from self._load_plans_op()

    def _on_stream_end(self, exc: Exception | None) -> bool:
        """The stream ended (`exc`: its error, None when it simply ended). True: reopen at
        once (the resume point was gone: the cache starts afresh); False: the cache stops
        trusting itself until caught up again, and the caller backs off."""
        assert self.cache is not None
        mapped = error_from_rpc(exc) if isinstance(exc, grpc.RpcError) else exc
        if isinstance(mapped, OutOfRange):
            self.cache.reset()
            return True
        self.cache.lost()
        return False

    @staticmethod
    def _next_backoff(backoff: float) -> float:
        return min(backoff * 2, MAX_BACKOFF)

    def _silent_stream(self, stream: Any) -> bool:
        """The watchdog's question: has this stream said nothing for too long? (Then the
        cache stops trusting itself and the caller cancels the stream.)"""
        cache = self.cache
        if stream is None or cache is None or not cache.silent_too_long():
            return False
        cache.lost()
        return True

    @staticmethod
    def _callback_failed(subject: str) -> None:
        log.exception("on_change(%r, ...) raised; the watch goes on", subject)
