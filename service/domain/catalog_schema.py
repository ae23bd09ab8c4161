"""The catalog file's schema: which keys each table may hold, the line a key is on, and the
allowed key nearest to a misspelt one.

`tomllib` keeps no positions and no TOML library that does is a dependency, so a key's line is
found by scanning the text: table headers, `key =` lines (bare, quoted and dotted keys) and
multi-line arrays, strings and inline tables skipped over. The scan only points at lines; what the
file means is always tomllib's parse.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

Path = tuple[str, ...]

TOP_KEYS = ("default_plan", "past_due_grace_seconds", "features", "limits", "meters", "plans")
PLAN_KEYS = (
    "rank",
    "clerk_slugs",
    "clerk_plan_ids",
    "features",
    "limits",
    "lifetime",
    "grant_only",
)
METER_KEYS = ("reset",)


def suggest(word: str, allowed: tuple[str, ...] | list[str]) -> str:
    """` (did you mean `x`?)` for the nearest allowed word, else ``."""
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _unquote(part: str) -> str:
    part = part.strip()
    if len(part) >= 2 and part[0] == part[-1] == '"':
        try:
            return str(json.loads(part))
        except ValueError:
            return part[1:-1]
    if len(part) >= 2 and part[0] == part[-1] == "'":
        return part[1:-1]
    return part


def _split_key(text: str) -> Path:
    """`a."b.c".d` -> ("a", "b.c", "d")."""
    parts: list[str] = []
    current = ""
    quote = ""
    for ch in text:
        if quote:
            current += ch
            if ch == quote and not (quote == '"' and current.endswith('\\"')):
                quote = ""
        elif ch in "\"'":
            quote = ch
            current += ch
        elif ch == ".":
            parts.append(_unquote(current))
            current = ""
        else:
            current += ch
    parts.append(_unquote(current))
    return tuple(parts)


class KeyLines:
    """The 1-based line of each key path (`("plans", "pro", "rank")`) and table header."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Path, int] = {}
        table: Path = ()
        depth = 0  # open [ and { of a multi-line value
        in_string = ""  # the open triple quote of a multi-line string
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string or depth:
                depth, in_string = _scan_value(line, depth, in_string)
                continue
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("["):
                inner = stripped.lstrip("[")
                end = _find_outside_quotes(inner, "]")
                table = _split_key(inner[:end]) if end >= 0 else ()
                for i in range(1, len(table) + 1):
                    self._lines.setdefault(table[:i], number)
                continue
            equals = _find_outside_quotes(stripped, "=")
            if equals < 0:
                continue
            path = table + _split_key(stripped[:equals])
            for i in range(len(table) + 1, len(path) + 1):
                self._lines.setdefault(path[:i], number)
            depth, in_string = _scan_value(stripped[equals + 1 :], 0, "")

    def line(self, path: Path) -> int | None:
        """The line of `path`, else of the nearest enclosing key or table that has one."""
        for n in range(len(path), 0, -1):
            if path[:n] in self._lines:
                return self._lines[path[:n]]
        return None


def _find_outside_quotes(text: str, target: str) -> int:
    quote = ""
    escaped = False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == target:
            return i
    return -1


def _scan_value(text: str, depth: int, in_string: str) -> tuple[int, str]:
    """The bracket depth and open multi-line string after `text` (comments skipped)."""
    i = 0
    while i < len(text):
        if in_string:
            end = text.find(in_string, i)
            if end < 0:
                return depth, in_string
            i, in_string = end + 3, ""
            continue
        ch = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            in_string = text[i : i + 3]
            i += 3
            continue
        if ch in "\"'":
            rest = text[i + 1 :]
            end = _closing(rest, ch)
            i += end + 2 if end >= 0 else len(text)
            continue
        if ch == "#":
            break
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, in_string


def _closing(rest: str, quote: str) -> int:
    escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif ch == "\\" and quote == '"':
            escaped = True
        elif ch == quote:
            return i
    return -1


def unknown_keys(data: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """Every key the schema does not know, with its path and message (suggestion included)."""
    found: list[tuple[Path, str]] = []

    def check(where: Path, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        label = ".".join(where) if where else "top level"
        for key in table:
            if key not in allowed:
                found.append(
                    ((*where, key), f"{label}: unknown key `{key}`{suggest(key, allowed)}")
                )

    check((), data, TOP_KEYS)
    plans = data.get("plans")
    if isinstance(plans, dict):
        for name, plan in plans.items():
            if isinstance(plan, dict):
                check(("plans", name), plan, PLAN_KEYS)
    meters = data.get("meters")
    if isinstance(meters, dict):
        for name, meter in meters.items():
            if isinstance(meter, dict):
                check(("meters", name), meter, METER_KEYS)
    return found
