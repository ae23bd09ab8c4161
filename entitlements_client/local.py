"""The in-process cache shared by the sync and async clients, and the answers they return."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from entitlements.v1 import entitlement_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class LimitValue:
    value: int
    unlimited: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A subject's resolved entitlements as of `version`."""

    subject: str
    plan: str
    features: frozenset[str]
    limits: dict[str, LimitValue]
    valid_until_ms: int | None
    version: int

    @classmethod
    def from_message(cls, m: pb.GetEntitlementsResponse) -> Snapshot:
        return cls(
            subject=m.subject,
            plan=m.plan,
            features=frozenset(m.features),
            limits={k: LimitValue(v.value, v.unlimited) for k, v in m.limits.items()},
            valid_until_ms=m.valid_until.ToMilliseconds() if m.HasField("valid_until") else None,
            version=m.version,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    plan: str
    reason: str


@dataclass(frozen=True, slots=True)
class Limits:
    plan: str
    limits: dict[str, LimitValue]


@dataclass(frozen=True, slots=True)
class LimitCheck:
    allowed: bool
    limit: int
    remaining: int
    unlimited: bool


def limit_check(snapshot: Snapshot, name: str, current_usage: int, requested: int) -> LimitCheck:
    if name not in snapshot.limits:
        raise ValueError(f"unknown limit {name!r}")
    limit = snapshot.limits[name]
    wanted = requested if requested > 0 else 1
    if limit.unlimited:
        return LimitCheck(True, 0, 0, True)
    return LimitCheck(
        current_usage + wanted <= limit.value,
        limit.value,
        max(0, limit.value - current_usage),
        False,
    )


class LocalCache:
    """Subject → Snapshot, bounded LRU. Trusted only while `synced` (the watch is caught up)."""

    def __init__(self, max_subjects: int = 100_000) -> None:
        self.max_subjects = max_subjects
        self.entries: OrderedDict[str, Snapshot] = OrderedDict()
        self.synced = False
        self.generation = 0
        self.resume_version: int | None = None
        self.features: frozenset[str] = frozenset()

    def fresh(self, subject: str) -> Snapshot | None:
        """The snapshot when it may answer now, else None."""
        if not self.synced:
            return None
        snap = self.entries.get(subject)
        if snap is None:
            return None
        until = snap.valid_until_ms
        if until is not None and time.time() * 1000 >= until:
            return None
        return snap

    def decide(self, snap: Snapshot, feature: str) -> bool:
        """The local answer for `feature`; an unknown feature is an error, as on the server."""
        if feature in snap.features:
            return True
        if feature in self.features:
            return False
        raise ValueError(f"unknown feature {feature!r}")

    def put_from_rpc(self, snap: Snapshot, generation: int) -> None:
        """Cache an RPC answer unless a watched change arrived since it was asked for."""
        if self.synced and generation == self.generation:
            self.entries[snap.subject] = snap
            if len(self.entries) > self.max_subjects:
                self.entries.popitem(last=False)

    def apply(self, message: pb.WatchEntitlementsResponse) -> None:
        """One watch message: a change (update if cached) or the caught-up marker."""
        self.generation += 1
        if message.subject:
            if message.subject in self.entries:
                self.entries[message.subject] = Snapshot.from_message(message.entitlements)
        else:
            self.synced = True
        self.resume_version = message.version

    def lost(self) -> None:
        """The stream broke: stop trusting the cache until it has caught up again."""
        self.synced = False
        self.generation += 1

    def reset(self) -> None:
        """The resume point is gone (OUT_OF_RANGE): forget everything, watch from now."""
        self.lost()
        self.entries.clear()
        self.resume_version = None


def watch_request(cache: LocalCache) -> pb.WatchEntitlementsRequest:
    request = pb.WatchEntitlementsRequest()
    if cache.resume_version is not None:
        request.since_version = cache.resume_version
    return request


def decision_from(response: Any) -> Decision:
    return Decision(
        allowed=response.allowed,
        plan=response.plan,
        reason=pb.Reason.Name(response.reason),
    )
