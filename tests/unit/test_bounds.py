"""Value bounds at the domain's edge (SPEC §9), over extreme values (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.bounds import (
    INT64_MAX,
    MAX_FUTURE_MS,
    MAX_TIME_MS,
    MIN_TIME_MS,
    bounded_time_ms,
    clamp_future,
    echo,
    storable_text,
    within_window,
)
from service.domain.events import EventKind, normalize_event
from tests.support import load_fixture

pytestmark = pytest.mark.unit

NOW = 1_790_000_000_000  # 2026-09-21
EXTREME_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 10**11 - 1, 10**11, 2**63 - 1, 2**63, -(2**63), 1e20, 1e30]),
    st.sampled_from([253402300800000000, 253402300799999, 32503680000000]),  # µs, ms past 9999
)
ODD_VALUES = st.one_of(
    EXTREME_NUMBERS,
    st.text(max_size=30),
    st.integers().map(str),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@given(ODD_VALUES)
def test_a_time_is_in_the_window_or_missing(raw: Any) -> None:
    parsed = bounded_time_ms(raw)
    assert parsed.ms is None or MIN_TIME_MS <= parsed.ms < MAX_TIME_MS
    if raw is None:
        assert parsed.ms is None and parsed.note is None
    elif parsed.ms is None:
        assert parsed.note  # dropped, and said so


@pytest.mark.parametrize("raw", ["²", "٣٤", "1²", "--5", "-", " ", "1e12", "0x10"])
def test_strings_that_are_not_plain_integers_are_not_timestamps(raw: str) -> None:
    assert bounded_time_ms(raw).ms is None


@given(st.integers(min_value=MIN_TIME_MS // 1000, max_value=MAX_TIME_MS // 1000 - 1))
def test_ten_digit_values_are_seconds(seconds: int) -> None:
    assert bounded_time_ms(seconds).ms == seconds * 1000
    assert bounded_time_ms(str(seconds)).ms == seconds * 1000


@given(st.integers(min_value=MIN_TIME_MS, max_value=MAX_TIME_MS - 1))
def test_thirteen_digit_values_are_milliseconds(ms: int) -> None:
    assert bounded_time_ms(ms).ms == ms
    assert bounded_time_ms(float(ms)).ms == ms


@pytest.mark.parametrize(
    "raw",
    [253402300800000000, 1e20, 1e30, 2**63, -(2**63) - 1, 32503680000000, float("inf"), -5],
)
def test_microseconds_and_beyond_int64_are_missing(raw: Any) -> None:
    parsed = bounded_time_ms(raw, "period_end")
    assert parsed.ms is None
    assert parsed.note is not None and parsed.note.startswith("period_end")


@given(st.integers(min_value=MIN_TIME_MS, max_value=MAX_TIME_MS), st.integers(0, 10**13))
def test_an_event_time_is_never_more_than_a_day_ahead(received: int, ahead: int) -> None:
    clamped, note = clamp_future(received + ahead, received)
    assert clamped <= received + MAX_FUTURE_MS
    assert (note is None) == (ahead <= MAX_FUTURE_MS)


def test_within_window_and_echo() -> None:
    assert within_window(None) is None
    assert within_window(2**62) is None
    assert within_window(NOW) == NOW
    assert len(echo("x" * 1_000_000)) < 250
    assert storable_text("a\x00b\ud800", 10) == "a\ufffdb?"


def _item_event(**overrides: Any) -> bytes:
    payload = load_fixture("item_past_due_pro", at_ms=NOW)
    for key, value in overrides.items():
        if key == "timestamp":
            payload["timestamp"] = value
        else:
            payload["data"][key] = value
    return json.dumps(payload).encode()


@given(
    timestamp=ODD_VALUES,
    period_end=ODD_VALUES,
    past_due_at=ODD_VALUES,
    updated_at=ODD_VALUES,
)
def test_normalised_items_hold_only_bounded_times(
    timestamp: Any, period_end: Any, past_due_at: Any, updated_at: Any
) -> None:
    try:
        raw = _item_event(
            timestamp=timestamp,
            period_end=period_end,
            past_due_at=past_due_at,
            updated_at=updated_at,
        )
    except ValueError:  # NaN/inf have no JSON form of their own: json.dumps writes them anyway
        return
    event = normalize_event(raw, "", NOW, NOW)
    assert event.event_ms is None or MIN_TIME_MS <= event.event_ms <= NOW + MAX_FUTURE_MS
    for item in event.items:
        for value in (item.period_end_ms, item.past_due_at_ms):
            assert value is None or MIN_TIME_MS <= value < MAX_TIME_MS
        assert MIN_TIME_MS <= item.event_ms <= NOW + MAX_FUTURE_MS


def test_seconds_envelope_timestamp_as_in_clerks_openapi_examples() -> None:
    event = normalize_event(_item_event(timestamp=NOW // 1000), "", 1, NOW)
    assert event.event_ms == NOW // 1000 * 1000


def test_far_future_event_time_is_clamped_with_a_note() -> None:
    event = normalize_event(_item_event(timestamp=NOW + 400 * 86_400_000), "", NOW, NOW)
    assert event.kind is EventKind.ITEMS
    assert event.event_ms == NOW
    assert any("clamped" in note for note in event.notes)


def test_out_of_range_values_are_noted_not_stored() -> None:
    event = normalize_event(
        _item_event(
            period_end=253402300800000000,
            past_due_at=1e30,
            timestamp=INT64_MAX + 1,
            updated_at=None,
        ),
        "",
        NOW,
        NOW,
    )
    assert event.kind is EventKind.ITEMS
    (item,) = event.items
    assert item.period_end_ms is None and item.past_due_at_ms is None
    assert event.event_ms == NOW  # the envelope time was dropped: the fallback is used
    assert len(event.notes) == 3


def test_deeply_nested_json_is_unparseable_not_raised() -> None:
    deep = b'{"type":"subscriptionItem.active","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    event = normalize_event(deep, "", NOW, NOW)
    assert event.kind is EventKind.UNPARSEABLE


def test_oversized_item_id_is_unparseable() -> None:
    event = normalize_event(_item_event(id="csub_item_" + "x" * 300), "", NOW, NOW)
    assert event.kind is EventKind.UNPARSEABLE
    assert len(event.error or "") < 400
