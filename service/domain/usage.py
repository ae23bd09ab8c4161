"""Metered limits (SPEC §10.1): which period usage counts in, and whether an amount fits.

Pure and UTC-only (no DST: every period boundary is an instant in milliseconds). The storage
adapters keep one counter per (subject, meter) holding its period's bounds and the amount used;
every rule about that counter lives here, once:

* `period_at` — the period an instant falls in, for a meter's reset policy and, for
  `billing_period`, the subject's entitling paid item (`BillingPeriod`); a billing period that
  ended while nobody called (no renewal event yet) rolls on by its own length in whole months.
* `Counter.at` — the counter as seen at an instant: a period that ended starts from zero; a
  period that changed before it ended (a plan change mid-period) keeps what was counted so far
  and takes the new bounds.
* `Counter.consume` — the check-and-record rule: `used + reserved + amount` must fit the limit.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from service.domain.bounds import INT64_MAX
from service.domain.catalog import LimitValue, Reset

__all__ = [
    "Answer",
    "BillingPeriod",
    "Counter",
    "Decision",
    "Kind",
    "Period",
    "Reservation",
    "Reset",
    "applied",
    "period_at",
    "replayed",
]

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Period:
    """[start_ms, end_ms); `end_ms` None: never resets."""

    start_ms: int
    end_ms: int | None

    def contains(self, ms: int) -> bool:
        return self.start_ms <= ms and (self.end_ms is None or ms < self.end_ms)


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """The entitling paid item's current period, as Clerk last said (period_start…period_end)."""

    start_ms: int
    end_ms: int


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def add_months(ms: int, months: int) -> int:
    """The same day and time `months` later, clamped to the month's last day (Jan 31 + 1 month
    is Feb 28 or 29)."""
    dt = _dt(ms)
    index = dt.year * 12 + dt.month - 1 + months
    year, month = divmod(index, 12)
    day = min(dt.day, calendar.monthrange(year, month + 1)[1])
    return _ms(dt.replace(year=year, month=month + 1, day=day))


def month_of(ms: int) -> Period:
    """The UTC calendar month holding `ms`. The month of the last call is kept: nearly every
    call falls in it, and working it out (datetimes) took ~2.5 % of a Consume's event-loop
    samples in a py-spy profile."""
    last = _last_month
    if last.start_ms <= ms < (last.end_ms or 0):
        return last
    return _remember_month(ms)


def _remember_month(ms: int) -> Period:
    global _last_month
    dt = _dt(ms)
    start = datetime(dt.year, dt.month, 1, tzinfo=UTC)
    _last_month = Period(_ms(start), add_months(_ms(start), 1))
    return _last_month


_last_month = Period(0, 0)  # empty: the first call works its month out


def day_of(ms: int) -> Period:
    dt = _dt(ms)
    start = datetime(dt.year, dt.month, dt.day, tzinfo=UTC)
    return Period(_ms(start), _ms(start + timedelta(days=1)))


def _whole_months(period: BillingPeriod) -> int:
    """How many calendar months a billing period spans (1 for monthly, 12 for annual), or 0
    when it is not a whole number of months (then it repeats by its exact length)."""
    for months in (1, 12, 3, 6, 2, 24):
        if add_months(period.start_ms, months) == period.end_ms:
            return months
    return 0


def billing_period_at(period: BillingPeriod, ms: int) -> Period:
    """The billing period holding `ms`: the item's own, or — once it ended with no renewal
    heard yet — the next ones, each as long as it was (in whole months where it was)."""
    start, end = period.start_ms, period.end_ms
    if end <= start:
        return month_of(ms)
    if ms < end:
        return Period(start, end)
    months = _whole_months(period)
    if months:
        # Step from the original anchor, so Jan 31 → Feb 28 → Mar 31 (never drifting to 28).
        # A month is at most 31 days: that gives a lower bound, walked up from there.
        steps = max(1, (ms - start) // (31 * DAY_MS * months))
        while add_months(start, months * (steps + 1)) <= ms:
            steps += 1
        return Period(add_months(start, months * steps), add_months(start, months * (steps + 1)))
    length = end - start
    steps = (ms - start) // length
    return Period(start + steps * length, start + (steps + 1) * length)


def period_at(reset: Reset, ms: int, billing: BillingPeriod | None) -> Period:
    """The period usage counts in at `ms`."""
    if reset is Reset.NEVER:
        return Period(0, None)
    if reset is Reset.DAY:
        return day_of(ms)
    if reset is Reset.BILLING_PERIOD and billing is not None:
        return billing_period_at(billing, ms)
    return month_of(ms)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    used: int
    remaining: int
    unlimited: bool


@dataclass(frozen=True, slots=True)
class Counter:
    """One subject's usage of one meter in its current period; `reserved` is what live
    reservations hold (they count as used)."""

    period: Period
    used: int = 0
    reserved: int = 0

    def at(self, ms: int, current: Period) -> Counter:
        """This counter at `ms`, where `current` is the period `period_at` gives now."""
        if self.period.end_ms is not None and ms >= self.period.end_ms:  # the period ended
            return Counter(current, 0, self.reserved)
        if current != self.period:  # the plan changed within the period: keep the count
            return replace(self, period=current)
        return self

    def remaining(self, limit: LimitValue) -> int:
        if limit.unlimited:
            return INT64_MAX
        return max(0, limit.value - self.used - self.reserved)

    def consume(self, limit: LimitValue, amount: int) -> tuple[Counter, Decision]:
        """Check and record `amount`: recorded only when it fits (`used + reserved + amount`
        ≤ the limit); otherwise nothing changes."""
        fits = limit.unlimited or self.used + self.reserved + amount <= limit.value
        after = replace(self, used=self.used + amount) if fits else self
        return after, after.decision(limit, fits)

    def report(self, delta: int | None = None, set_to: int | None = None) -> Counter:
        """Record without a check (usage may pass the limit): add `delta` or set the total."""
        used = set_to if set_to is not None else self.used + (delta or 0)
        return replace(self, used=max(0, min(used, INT64_MAX)))

    def decision(self, limit: LimitValue, allowed: bool) -> Decision:
        return Decision(allowed, self.used, self.remaining(limit), limit.unlimited)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one recorded call answered; a retry with the same idempotency key gets it again."""

    allowed: bool
    used: int
    remaining: int
    unlimited: bool
    limit_value: int
    period: Period
    reservation_id: str | None = None
    expires_at_ms: int | None = None

    @classmethod
    def of(
        cls,
        counter: Counter,
        limit: LimitValue,
        allowed: bool,
        reservation_id: str | None = None,
        expires_at_ms: int | None = None,
    ) -> Answer:
        return cls(
            allowed,
            counter.used,
            counter.remaining(limit),
            limit.unlimited,
            0 if limit.unlimited else limit.value,
            counter.period,
            reservation_id,
            expires_at_ms,
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units held for work whose cost is known only after it ran (SPEC §10.1)."""

    reservation_id: str
    subject: str
    meter: str
    amount: int
    expires_at_ms: int
    held: bool = True

    def holds_at(self, ms: int) -> bool:
        """Whether its units still count as used at `ms` (held and not expired)."""
        return self.held and ms < self.expires_at_ms


MIN_RESERVATION_TTL_S = 1
MAX_RESERVATION_TTL_S = 86_400
DEFAULT_RESERVATION_TTL_S = 300


def reservation_ttl_ms(ttl_seconds: int) -> int | None:
    """The hold's length in ms (0: the default), or None when out of range."""
    ttl = ttl_seconds or DEFAULT_RESERVATION_TTL_S
    if not MIN_RESERVATION_TTL_S <= ttl <= MAX_RESERVATION_TTL_S:
        return None
    return ttl * 1000


class Kind(StrEnum):
    """What a recorded call did to its counter (usage_records.kind)."""

    CONSUME = "consume"  # allowed: `amount` added; refused: amount 0
    REPORT = "report"  # a delta added (may be negative; never below 0)
    SET = "set"  # the period's total set
    RESERVE = "reserve"  # units held elsewhere (reservations); `used` unchanged
    COMMIT = "commit"  # a reservation's actual amount added
    RELEASE = "release"  # a reservation given back; `used` unchanged


def applied(counter: Counter, kind: Kind, amount: int) -> Counter:
    """The counter after a recorded call of `kind` (the one rule both the use cases and
    `replayed` follow)."""
    if kind in (Kind.CONSUME, Kind.REPORT, Kind.COMMIT):
        return counter.report(delta=amount)
    if kind is Kind.SET:
        return counter.report(set_to=amount)
    return counter


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One stored call, as `verify` replays it: its kind, amount, when and in which period."""

    kind: Kind
    amount: int
    at_ms: int
    period: Period


def replayed(events: Iterable[UsageEvent]) -> Counter | None:
    """The counter the stored calls of one subject's meter arrive at, in their order, from
    zero (None when there are none)."""
    counter: Counter | None = None
    for event in events:
        if counter is None:
            counter = Counter(event.period)
        counter = applied(counter.at(event.at_ms, event.period), event.kind, event.amount)
    return counter
