"""Metered usage (SPEC §10.1), shared by the sync and async clients: the requests each call
sends (built and checked here once, so the two clients cannot drift) and the answers they
return, made from the wire messages. Pure: no I/O.

Usage is always answered by the service: nothing here is ever cached. Every recording call
carries an idempotency key; when the caller gives none a random one is made, which protects
nothing across the caller's own retries: a caller that retries (after a timeout, say) must pass
its own key, the same on every attempt, so that the service counts the units once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements_client._answers import when
from entitlements_client._errors import InvalidArgument

INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Consumption:
    """Consume's answer: `allowed` (recorded) or not (nothing recorded). `limit` is the limit's
    value in the subject's current terms; `remaining` and `limit` mean nothing when
    `unlimited`. `duplicate`: the key was seen before, this is the first call's answer."""

    allowed: bool
    used: int
    remaining: int
    unlimited: bool
    limit: int
    resets_at: datetime | None
    duplicate: bool

    @classmethod
    def from_message(cls, m: usage_pb.ConsumeResponse) -> Consumption:
        return cls(
            m.allowed,
            m.used,
            m.remaining,
            m.unlimited,
            m.limit_value,
            when(m, "resets_at"),
            m.duplicate,
        )


@dataclass(frozen=True, slots=True)
class UsageReport:
    """ReportUsage's answer: usage recorded without a check (it may pass the limit)."""

    used: int
    remaining: int
    unlimited: bool
    limit: int
    resets_at: datetime | None
    duplicate: bool

    @classmethod
    def from_message(cls, m: usage_pb.ReportUsageResponse) -> UsageReport:
        return cls(
            m.used, m.remaining, m.unlimited, m.limit_value, when(m, "resets_at"), m.duplicate
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """Reserve's answer: when `allowed`, `reservation_id` holds the units (they count as used)
    until `commit`, `release` or `expires_at`."""

    allowed: bool
    reservation_id: str | None
    expires_at: datetime | None
    used: int
    remaining: int
    unlimited: bool
    resets_at: datetime | None
    duplicate: bool

    @classmethod
    def from_message(cls, m: usage_pb.ReserveResponse) -> Reservation:
        return cls(
            m.allowed,
            m.reservation_id or None,
            when(m, "expires_at"),
            m.used,
            m.remaining,
            m.unlimited,
            when(m, "resets_at"),
            m.duplicate,
        )


@dataclass(frozen=True, slots=True)
class Settlement:
    """The usage after a reservation ended (`commit` or `release`)."""

    used: int
    remaining: int
    unlimited: bool

    @classmethod
    def from_message(
        cls, m: usage_pb.CommitReservationResponse | usage_pb.ReleaseReservationResponse
    ) -> Settlement:
        return cls(m.used, m.remaining, m.unlimited)


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One metered limit's usage in its current period (`resets_at` None: never resets)."""

    limit: str
    used: int
    reserved: int
    remaining: int
    unlimited: bool
    limit_value: int
    period_start: datetime | None
    resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class Usage:
    """GetUsage's answer: every metered limit of the catalog, by name."""

    subject: str
    meters: dict[str, MeterUsage]

    @classmethod
    def from_message(cls, m: usage_pb.GetUsageResponse) -> Usage:
        return cls(
            m.subject,
            {
                u.limit: MeterUsage(
                    u.limit,
                    u.used,
                    u.reserved,
                    u.remaining,
                    u.unlimited,
                    u.limit_value,
                    when(u, "period_start"),
                    when(u, "resets_at"),
                )
                for u in m.usage
            },
        )


# ---- requests ----------------------------------------------------------------------------


def _key(idempotency_key: str | None) -> str:
    """The caller's key, else a random one (which guards nothing across the caller's retries)."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    if not idempotency_key:
        raise InvalidArgument("idempotency_key must not be empty (None: a random one)")
    return idempotency_key


def _amount(amount: int, name: str = "amount", minimum: int = 1) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"{name} must be an int")
    if not minimum <= amount <= INT64_MAX:
        raise InvalidArgument(f"{name} must be {minimum} … {INT64_MAX}, got {amount}")
    return amount


def consume_request(
    subject: str, limit: str, amount: int, idempotency_key: str | None
) -> usage_pb.ConsumeRequest:
    return usage_pb.ConsumeRequest(
        subject=subject, limit=limit, amount=_amount(amount), idempotency_key=_key(idempotency_key)
    )


def report_request(
    subject: str, limit: str, delta: int | None, total: int | None, idempotency_key: str | None
) -> usage_pb.ReportUsageRequest:
    """Exactly one of `delta` (may be negative, a correction) and `total` (the period's)."""
    if (delta is None) == (total is None):
        raise InvalidArgument("give exactly one of delta and set")
    request = usage_pb.ReportUsageRequest(
        subject=subject, limit=limit, idempotency_key=_key(idempotency_key)
    )
    if delta is not None:
        request.delta = _amount(delta, "delta", minimum=-INT64_MAX)
    else:
        assert total is not None
        request.set = _amount(total, "set", minimum=0)
    return request


def reserve_request(
    subject: str, limit: str, amount: int, ttl_seconds: int, idempotency_key: str | None
) -> usage_pb.ReserveRequest:
    """`ttl_seconds` 0: the service's default (5 min); else 1 s … 1 day."""
    return usage_pb.ReserveRequest(
        subject=subject,
        limit=limit,
        amount=_amount(amount),
        ttl_seconds=_amount(ttl_seconds, "ttl_seconds", minimum=0),
        idempotency_key=_key(idempotency_key),
    )


def commit_request(reservation_id: str, amount: int) -> usage_pb.CommitReservationRequest:
    """`amount`: the actual units, 0 … the reserved amount."""
    return usage_pb.CommitReservationRequest(
        reservation_id=reservation_id, amount=_amount(amount, minimum=0)
    )


def release_request(reservation_id: str) -> usage_pb.ReleaseReservationRequest:
    return usage_pb.ReleaseReservationRequest(reservation_id=reservation_id)
