"""The answers the clients return, and how they are made from wire messages (pure)."""

from __future__ import annotations

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


def decision_from(response: Any) -> Decision:
    return Decision(
        allowed=response.allowed,
        plan=response.plan,
        reason=pb.Reason.Name(response.reason),
    )
