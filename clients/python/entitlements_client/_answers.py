"""The answers the clients return, and how they are made from wire messages (pure).

A `Snapshot` holds what may be answered locally: features (overrides already applied) and
limit *values*, with the overrides, trial and metered periods for display. It never holds
usage: usage moves with every consumption anywhere, so only the service answers it
(`check_limit` on a metered limit, `consume`, `get_usage`; see _usage.py).

`limit_check` is the service's CheckLimit rule answered locally; it is proved equal to the
service's (service/domain/resolution.py) by shared test vectors (tests/vectors/limit_check.json,
run against both), not trusted to stay equal by inspection."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_client._errors import InvalidArgument


def when(message: Any, field: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when unset."""
    if not message.HasField(field):
        return None
    ts: Timestamp = getattr(message, field)
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LimitValue:
    """A limit's value in a subject's terms; `value` means nothing when `unlimited`."""

    value: int
    unlimited: bool


@dataclass(frozen=True, slots=True)
class Override:
    """A per-customer term in force (SPEC §10.2): a feature granted (`enabled`) or withheld,
    or a limit's value replaced (`value`)."""

    override_id: str
    feature: str | None
    limit: str | None
    enabled: bool
    value: LimitValue | None
    expires_at: datetime | None
    reason: str

    @classmethod
    def from_message(cls, m: pb.Override) -> Override:
        return cls(
            override_id=m.override_id,
            feature=m.feature or None,
            limit=m.limit or None,
            enabled=m.enabled,
            value=LimitValue(m.value.value, m.value.unlimited) if m.HasField("value") else None,
            expires_at=when(m, "expires_at"),
            reason=m.reason,
        )


@dataclass(frozen=True, slots=True)
class MeterPeriod:
    """A metered limit's current period; `resets_at` None for a meter that never resets."""

    limit: str
    period_start: datetime | None
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A subject's resolved entitlements as of `version`.

    `metered` names the limits whose usage the service keeps (every message lists every
    meter): `check_limit` on one of them always asks the service."""

    subject: str
    plan: str
    features: frozenset[str]
    limits: dict[str, LimitValue]
    valid_until_ms: int | None
    version: int
    overrides: tuple[Override, ...] = ()
    trial: bool = False
    trial_ends_at: datetime | None = None
    metered: dict[str, MeterPeriod] = field(default_factory=dict)

    @classmethod
    def from_message(cls, m: pb.GetEntitlementsResponse) -> Snapshot:
        return cls(
            subject=m.subject,
            plan=m.plan,
            features=frozenset(m.features),
            limits={k: LimitValue(v.value, v.unlimited) for k, v in m.limits.items()},
            valid_until_ms=m.valid_until.ToMilliseconds() if m.HasField("valid_until") else None,
            version=m.version,
            overrides=tuple(Override.from_message(o) for o in m.overrides),
            trial=m.trial,
            trial_ends_at=when(m, "trial_ends_at"),
            # Periods only: the usage an RPC answer carries is left out (it would go stale).
            metered={
                p.limit: MeterPeriod(p.limit, when(p, "period_start"), when(p, "resets_at"))
                for p in m.metered
            },
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """CanUse's full answer; `reason` is the service's Reason name (e.g. "FEATURE_IN_PLAN")."""

    allowed: bool
    plan: str
    reason: str


@dataclass(frozen=True, slots=True)
class Limits:
    """A subject's plan and every limit's value."""

    plan: str
    limits: dict[str, LimitValue]


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """CheckLimit's answer. `remaining` is what is left *before* the requested units
    (limit - current usage, never below 0), so after them `remaining - requested` are left;
    when `unlimited`, `limit` and `remaining` mean nothing (both come as the service sends them)."""

    allowed: bool
    limit: int
    remaining: int
    unlimited: bool


def limit_check(snapshot: Snapshot, name: str, current_usage: int, requested: int) -> LimitCheck:
    """The local answer for a limit the service does not meter (see `answers_locally`): the
    service's rule, refusals included, as tests/vectors/limit_check.json pins it."""
    if name not in snapshot.limits:
        raise InvalidArgument(f"unknown limit {name!r}")
    if current_usage < 0 or requested < 0:
        raise InvalidArgument("current_usage and requested must not be negative")
    limit = snapshot.limits[name]
    wanted = requested if requested > 0 else 1
    if limit.unlimited:
        return LimitCheck(True, limit.value, 0, True)
    return LimitCheck(
        current_usage + wanted <= limit.value,
        limit.value,
        max(0, limit.value - current_usage),
        False,
    )


def answers_locally(snapshot: Snapshot, name: str, metered: frozenset[str]) -> bool:
    """Whether a limit check may be answered from `snapshot`: never for a metered limit
    (named metered by this snapshot or by any the client has seen: `metered`), whose usage
    only the service knows. An unknown limit is answered locally: with an error."""
    return name not in metered and name not in snapshot.metered


def limit_check_from(response: pb.CheckLimitResponse) -> LimitCheck:
    return LimitCheck(response.allowed, response.limit, response.remaining, response.unlimited)


def decision_from(response: Any) -> Decision:
    return Decision(
        allowed=response.allowed,
        plan=response.plan,
        reason=pb.Reason.Name(response.reason),
    )
