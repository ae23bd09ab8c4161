"""Value bounds at the edge of the domain (SPEC §9): what a signed but odd value becomes.

A correctly signed delivery can still carry a timestamp in microseconds, in seconds, past year
9999 or beyond int64. Such values must never be stored as they are: one of them would break
every later read of its subject (wire timestamps end at year 9999, PostgreSQL's bigint at 2^63).
The rules live here, once, and every parser of a time value goes through `bounded_time_ms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# The plausible window for any Clerk time: 2000-01-01T00:00:00Z … 2200-01-01T00:00:00Z (ms).
MIN_TIME_MS = 946_684_800_000
MAX_TIME_MS = 7_258_118_400_000
# What a protobuf Timestamp can carry: 1970 (as used here) … 9999-12-31T23:59:59.999Z.
MAX_WIRE_MS = 253_402_300_800_000
# Below this a timestamp is in seconds (10 digits today), at or above it in milliseconds.
SECONDS_BELOW = 10**11
# An event time further ahead of the receive time than this is clamped to the receive time.
MAX_FUTURE_MS = 24 * 3600 * 1000
# Echoed caller values (in error messages and notes) are cut to this many characters.
MAX_ECHO_CHARS = 200


# A JSON integer longer than this many digits is beyond int64 whatever it says; Python's JSON
# parser refuses integers past 4,300 digits outright, which would lose the whole delivery.
MAX_INT_DIGITS = 40


@dataclass(frozen=True, slots=True)
class OversizedNumber:
    """A JSON integer too long to be a value here (its digit count kept for the note): the
    field holding it is treated as missing, the rest of the delivery still applies."""

    digits: int


def parse_json_int(text: str) -> int | OversizedNumber:
    """`json.loads(..., parse_int=parse_json_int)`: integers as usual, absurdly long ones as an
    `OversizedNumber` instead of a ValueError for the whole body."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        return OversizedNumber(digits)
    return int(text)


@dataclass(frozen=True, slots=True)
class BoundedTime:
    """A parsed time: `ms` within the window, or None with `note` saying why it was dropped."""

    ms: int | None
    note: str | None = None


def _as_int(raw: object) -> int | str | None:
    """An integer from an int, an integral float or a numeric string; a reason string when the
    value is numeric but unusable; None when it is not a number at all."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, OversizedNumber):
        return f"beyond int64 ({raw.digits} digits)"
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            return "not a finite number"
        if abs(raw) >= 2.0**63:
            return "beyond int64"
        value = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        digits = text.removeprefix("-")
        # ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() refuses.
        if not digits or len(text) > MAX_INT_DIGITS or not (digits.isascii() and digits.isdigit()):
            return None
        value = int(text)
    else:
        return None
    if not INT64_MIN <= value <= INT64_MAX:
        return "beyond int64"
    return value


def bounded_time_ms(raw: object, what: str = "timestamp") -> BoundedTime:
    """A Clerk time value as milliseconds within the plausible window.

    Seconds (below 10^11) are read as seconds; anything outside 2000-01-01 … 2200-01-01 or
    beyond int64 is treated as missing, with a note naming `what`. Absent/null is missing
    without a note.
    """
    if raw is None:
        return BoundedTime(None)
    value = _as_int(raw)
    if value is None:
        return BoundedTime(None, f"{what}: not a timestamp; ignored")
    if isinstance(value, str):
        return BoundedTime(None, f"{what}: {value}; ignored")
    ms = value * 1000 if abs(value) < SECONDS_BELOW else value
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        return BoundedTime(None, f"{what}: {value} is outside 2000-01-01 … 2200-01-01; ignored")
    return BoundedTime(ms)


def within_window(ms: int | None) -> int | None:
    """A stored or computed instant, or None when it lies outside the plausible window (data
    written before these bounds existed is read through this, so it can never break a read)."""
    if ms is None or not MIN_TIME_MS <= ms < MAX_TIME_MS:
        return None
    return ms


def wire_ms(ms: int | None) -> int | None:
    """An instant a wire Timestamp can carry (0 … year 9999), else None."""
    if ms is None or not 0 <= ms < MAX_WIRE_MS:
        return None
    return ms


def clamp_future(event_ms: int, received_ms: int | None) -> tuple[int, str | None]:
    """An event time more than a day ahead of its receive time becomes the receive time."""
    if received_ms is not None and event_ms > received_ms + MAX_FUTURE_MS:
        return received_ms, (
            f"event time {event_ms} is more than a day after it was received; "
            f"clamped to the receive time {received_ms}"
        )
    return event_ms, None


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """A caller's value as it may appear in a message: repr'd (no control characters) and cut."""
    text = repr(value)
    if len(text) > limit:
        return text[:limit] + f"… ({len(text)} characters)"
    return text


def storable_text(text: str, limit: int | None = None) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates; optionally cut to `limit`."""
    cleaned = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if limit is not None and len(cleaned) > limit:
        return cleaned[:limit]
    return cleaned
