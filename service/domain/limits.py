"""CheckLimit's rule, whole: which requests it refuses and what it answers. The Python client
answers limit checks locally with its own copy (it cannot import the service); the two are
held equal by shared test vectors, tests/vectors/limit_check.json, run against both."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from service.domain.bounds import echo
from service.domain.catalog import LimitValue
from service.domain.errors import InvalidArgument
from service.domain.resolution import Entitlements


@dataclass(frozen=True, slots=True)
class LimitDecision:
    allowed: bool
    limit: LimitValue
    remaining: int


def require_limit_request(
    limit_names: Collection[str], limit_name: str, current_usage: int, requested: int
) -> None:
    """Refuse a check of a limit the catalog lacks, or with a negative count."""
    if limit_name not in limit_names:
        raise InvalidArgument(f"unknown limit {echo(limit_name)}")
    if current_usage < 0 or requested < 0:
        raise InvalidArgument("current_usage and requested must not be negative")


def limit_decision(
    entitlements: Entitlements, limit_name: str, current_usage: int, requested: int
) -> LimitDecision:
    """Whether `requested` more units (0 taken as 1) fit under the limit given current usage;
    `remaining` is what is left before them (0 when unlimited)."""
    limit = entitlements.limits[limit_name]
    wanted = requested if requested > 0 else 1
    remaining = 0 if limit.unlimited else max(0, limit.value - current_usage)
    return LimitDecision(limit.allows(current_usage, wanted), limit, remaining)
