"""Usage periods and the consumption rule (service/domain/usage.py): plain values and
hypothesis over the whole plausible time window (month ends, leap years, UTC only)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service.domain.bounds import MAX_TIME_MS, MIN_TIME_MS
from service.domain.catalog import LimitValue
from service.domain.usage import (
    BillingPeriod,
    Counter,
    Period,
    Reset,
    add_months,
    billing_period_at,
    month_of,
    period_at,
)

pytestmark = pytest.mark.unit


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[arg-type,misc]


instants = st.integers(min_value=MIN_TIME_MS, max_value=MAX_TIME_MS - 400 * 86_400_000)


def test_months_clamp_to_their_last_day_and_keep_the_anchor() -> None:
    assert add_months(ms(2024, 1, 31), 1) == ms(2024, 2, 29)  # leap year
    assert add_months(ms(2025, 1, 31), 1) == ms(2025, 2, 28)
    monthly = BillingPeriod(ms(2025, 1, 31), ms(2025, 2, 28))
    # Nobody called for two months and no renewal came: Mar 31, not Mar 28.
    assert billing_period_at(monthly, ms(2025, 4, 1)) == Period(ms(2025, 3, 31), ms(2025, 4, 30))


def test_a_calendar_month_in_utc() -> None:
    assert month_of(ms(2024, 2, 29, 23, 59)) == Period(ms(2024, 2, 1), ms(2024, 3, 1))
    assert month_of(ms(2025, 12, 31, 23)) == Period(ms(2025, 12, 1), ms(2026, 1, 1))


def calendar_month(at: int) -> Period:
    """The reference, worked out afresh every time."""
    dt = datetime.fromtimestamp(at / 1000, UTC)
    following = (dt.year + dt.month // 12, dt.month % 12 + 1)
    return Period(ms(dt.year, dt.month, 1), ms(*following, 1))


month_edges = instants.map(lambda at: calendar_month(at).start_ms).flatmap(
    lambda start: st.sampled_from([start - 1, start, start + 1])
)


@given(st.lists(st.one_of(instants, month_edges), min_size=1, max_size=30))
def test_the_kept_month_never_answers_for_another_month(calls: list[int]) -> None:
    # month_of keeps the month of the last call: calls in any order, on either side of a
    # month's first millisecond, each get their own month.
    for at in calls:
        assert month_of(at) == calendar_month(at)


@given(instants, st.sampled_from(list(Reset)))
def test_every_instant_lies_in_its_period(at: int, reset: Reset) -> None:
    period = period_at(reset, at, None)
    assert period.contains(at)


@given(instants, st.integers(min_value=0, max_value=3000), st.sampled_from([1, 12]))
def test_billing_periods_tile_time_on_the_anchors_grid(
    start: int, later_days: int, months: int
) -> None:
    billing = BillingPeriod(start, add_months(start, months))
    at = billing.end_ms + later_days * 86_400_000
    period = billing_period_at(billing, at)
    assert period.contains(at)
    grid = [add_months(start, months * k) for k in range(0, 3000 // (28 * months) + 3)]
    assert period.start_ms in grid and period.end_ms in grid  # Jan 31 stays the 31st
    assert period.end_ms is not None
    assert billing_period_at(billing, period.end_ms).start_ms == period.end_ms  # no gap
    assert billing_period_at(billing, period.end_ms - 1) == period  # no overlap


@given(instants, st.integers(min_value=1, max_value=40 * 86_400_000), st.integers(0, 10**11))
def test_other_periods_repeat_by_their_exact_length(start: int, length: int, later: int) -> None:
    billing = BillingPeriod(start, start + length)
    assume(all(add_months(start, m) != start + length for m in (1, 2, 3, 6, 12, 24)))
    period = billing_period_at(billing, start + later)
    assert period.contains(start + later)
    assert period.end_ms is not None and period.end_ms - period.start_ms == length
    assert (period.start_ms - start) % length == 0


def test_a_period_that_ended_starts_from_zero_and_a_changed_one_keeps_the_count() -> None:
    jan = Period(ms(2026, 1, 1), ms(2026, 2, 1))
    counter = Counter(jan, used=7)
    assert counter.at(ms(2026, 2, 1), Period(ms(2026, 2, 1), ms(2026, 3, 1))).used == 0
    upgraded = Period(ms(2026, 1, 15), ms(2026, 2, 15))  # an upgrade mid-January
    kept = counter.at(ms(2026, 1, 15, 1), upgraded)
    assert kept.used == 7 and kept.period == upgraded


@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(1, 10**6),
)
def test_consume_records_only_what_fits(limit: int, used: int, reserved: int, amount: int) -> None:
    counter = Counter(Period(0, None), used, reserved)
    after, decision = counter.consume(LimitValue(limit), amount)
    fits = used + reserved + amount <= limit
    assert decision.allowed is fits
    assert after.used == used + (amount if fits else 0)
    assert decision.remaining == max(0, limit - after.used - reserved)
    unlimited, d = counter.consume(LimitValue(unlimited=True), amount)
    assert d.allowed and unlimited.used == used + amount and d.unlimited


def test_reported_usage_may_pass_the_limit_but_remaining_is_never_negative() -> None:
    counter = Counter(Period(0, None), 8).report(delta=5)
    assert counter.used == 13 and counter.remaining(LimitValue(10)) == 0
    assert counter.report(set_to=2).used == 2
