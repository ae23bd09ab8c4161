"""The read side's gRPC servicer: validate and convert the request, call a use case, build the
response (the write side's is billing_sync.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from service.application.app import Application
from service.application.records import CacheEntry
from service.domain.bounds import echo
from service.domain.errors import InvalidArgument
from service.domain.limits import limit_decision, require_limit_request
from service.domain.resolution import Entitlements
from service.domain.subjects import require_subject
from service.entrypoints.grpc_api.mapping import (
    can_use_message,
    check_limit_message,
    entitlements_message,
    limits_message,
    metered_messages,
    plans_message,
)
from service.entrypoints.grpc_api.watch import WatchMessages
from service.entrypoints.message_limits import WATCH_MAX_SUBJECTS

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_EVENT_ID_BYTES = 255


class Context(Protocol):
    """What a servicer reads of its call: the caller's address (per-client Watch limits).
    gRPC's ServicerContext is one; the Connect adapter passes its own (connect_api._Peer)."""

    def peer(self) -> str: ...


R = TypeVar("R")
M = TypeVar("M", pb.GetLimitsResponse, pb.GetEntitlementsResponse)


class EntitlementServicer(pb_grpc.EntitlementServiceServicer):
    """The read side: answers from the reader (cache, else PostgreSQL), resolved at call time."""

    def __init__(self, app: Application, watch_max_subjects: int = WATCH_MAX_SUBJECTS) -> None:
        self._app = app
        self._reader = app.reads
        self._catalog = app.catalog
        self._features = app.catalog.features
        self._watch = app.watch(WatchMessages(entitlements_message), watch_max_subjects)
        self._plans = plans_message(app.catalog)  # the catalog never changes while serving

    # Responses built from a cache entry are memoised in the entry (immutable, so is its
    # answer), living as long as the cache keeps it.

    def _memoised(self, entry: CacheEntry, key: Any, build: Callable[[Entitlements], R]) -> R:
        """The response `build` makes of the entry's entitlements, built once per entry."""
        memo = entry.memo
        response: R | None = memo.get(key)
        if response is None:
            response = memo[key] = build(entry.entitlements)
        return response

    async def _with_usage(self, entry: CacheEntry, message: M) -> M:
        """With metered limits, the message (built once per entry) with the subject's usage
        now, read from PostgreSQL on every call: usage moves with every consumption."""
        if not self._catalog.meters:
            return message
        found = await self._app.usage.usage(entry.entitlements.subject, entry.entitlements)
        answer = type(message)()
        answer.CopyFrom(message)
        del answer.metered[:]
        answer.metered.extend(metered_messages(found))
        return answer

    def _require_feature(self, feature: str) -> None:
        if feature not in self._features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")

    def _can_use(self, entry: CacheEntry, feature: str) -> pb.CanUseResponse:
        memo = entry.memo
        response: pb.CanUseResponse | None = memo.get(feature)
        if response is None:
            response = memo[feature] = can_use_message(entry.entitlements, feature)
        return response

    async def CanUse(self, request: pb.CanUseRequest, context: Context) -> pb.CanUseResponse:
        feature = request.feature
        if feature not in self._features:
            raise InvalidArgument(f"unknown feature {echo(feature)}")
        subject = request.subject
        entry = self._reader.cached_now(subject)
        if entry is None:
            entry = await self._reader.load_one(subject)
        return self._can_use(entry, feature)

    async def BatchCanUse(
        self, request: pb.BatchCanUseRequest, context: Context
    ) -> pb.BatchCanUseResponse:
        if len(request.checks) > MAX_BATCH:
            raise InvalidArgument(
                f"checks: at most {MAX_BATCH} per call, got {len(request.checks)}"
            )
        for i, check in enumerate(request.checks):
            try:
                require_subject(check.subject)
                self._require_feature(check.feature)
            except InvalidArgument as exc:
                raise InvalidArgument(f"checks[{i}]: {exc}") from None
        entries = await self._reader.get_many([c.subject for c in request.checks])
        return pb.BatchCanUseResponse(
            results=[self._can_use(entries[c.subject], c.feature) for c in request.checks]
        )

    async def GetLimits(
        self, request: pb.GetLimitsRequest, context: Context
    ) -> pb.GetLimitsResponse:
        entry = await self._reader.get(request.subject)
        return await self._with_usage(entry, self._memoised(entry, LIMITS_MEMO, limits_message))

    async def CheckLimit(
        self, request: pb.CheckLimitRequest, context: Context
    ) -> pb.CheckLimitResponse:
        require_limit_request(
            self._catalog.limit_names, request.limit, request.current_usage, request.requested
        )
        ent = (await self._reader.get(request.subject)).entitlements
        usage = request.current_usage
        if usage == 0 and request.limit in self._catalog.meters:  # none passed: the stored
            found = await self._app.usage.usage(request.subject, ent)
            usage = next(
                u.counter.used + u.counter.reserved for u in found if u.limit == request.limit
            )
        decision = limit_decision(ent, request.limit, usage, request.requested)
        metered = request.limit in self._catalog.meters  # a reset is a change by time
        return check_limit_message(
            ent, decision, ent.shown_until_ms if metered else ent.valid_until_ms
        )

    async def GetEntitlements(
        self, request: pb.GetEntitlementsRequest, context: Context
    ) -> pb.GetEntitlementsResponse:
        entry = await self._reader.get(request.subject)
        return await self._with_usage(
            entry, self._memoised(entry, ENTITLEMENTS_MEMO, entitlements_message)
        )

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: Context
    ) -> pb.ListPlansResponse:
        return self._plans

    async def WatchEntitlements(
        self, request: pb.WatchEntitlementsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Replay the change log from `since_version`, then follow it live (see watch.py).

        `version` in every message is a stream position: resuming from it misses nothing
        (a change may come twice; applying it again is harmless). A message with an empty
        `subject` is a heartbeat: "caught up", sent at least every second.
        """
        since = request.since_version if request.HasField("since_version") else None
        stream = await self._watch.open(
            request.subjects, since, _peer_address(context), request.log_id
        )
        async for message in stream:
            yield message


# Memo keys for whole-subject answers (features are strings, so these cannot collide).
LIMITS_MEMO = ("limits",)
ENTITLEMENTS_MEMO = ("entitlements",)


def _peer_address(context: Context) -> str:
    """The caller's address without its port ("ipv4:10.0.0.7"), for per-client limits."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
