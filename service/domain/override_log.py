"""Rebuilding per-customer overrides from their log (`override_events`), for `verify`.

Each set appends the override's whole row, each remove its time and reason; replayed in order,
through the subject aggregates (subject.py: a set places the override, a remove ends it only
while its subject holds it), they give every row of `overrides`. A row that differs from its
rebuild was changed outside the service (or a write was lost) and `verify` reports it, as it
does for items and usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.domain.catalog import LimitValue
from service.domain.resolution import Override
from service.domain.subject import Subjects

# The columns of an override row that `verify` compares, in this order.
OVERRIDE_COLUMNS = (
    "subject",
    "feature",
    "limit_name",
    "enabled",
    "limit_value",
    "unlimited",
    "reason",
    "created_at_ms",
    "expires_at_ms",
    "removed_at_ms",
    "remove_reason",
)
_REMOVED = OVERRIDE_COLUMNS.index("removed_at_ms")


@dataclass(frozen=True)
class OverrideEvent:
    """One logged set (every field) or remove (`at_ms` and `reason` only)."""

    override_id: str
    kind: str  # "set" | "remove"
    reason: str
    at_ms: int
    subject: str | None = None
    feature: str | None = None
    limit_name: str | None = None
    enabled: bool | None = None
    limit_value: int | None = None
    unlimited: bool | None = None
    expires_at_ms: int | None = None

    def override(self) -> Override:
        """The override a set places (its creation time is `at_ms`)."""
        value = None
        if self.limit_name is not None:
            value = (
                LimitValue(unlimited=True) if self.unlimited else LimitValue(self.limit_value or 0)
            )
        return Override(
            self.override_id,
            self.feature,
            self.limit_name,
            self.at_ms,
            bool(self.enabled),
            value,
            self.expires_at_ms,
            self.reason,
        )


def rebuilt_overrides(events: Iterable[OverrideEvent]) -> dict[str, tuple[Any, ...]]:
    """Every override's row (OVERRIDE_COLUMNS) as its events, in log order, make it."""
    rows: dict[str, tuple[Any, ...]] = {}
    subjects = Subjects()  # what each subject holds: the overrides not removed
    for e in events:
        if e.kind == "set":
            subjects.add(e.subject or "").set_override(e.override(), e.at_ms)
            rows[e.override_id] = (
                e.subject,
                e.feature,
                e.limit_name,
                e.enabled,
                e.limit_value,
                e.unlimited,
                e.reason,
                e.at_ms,
                e.expires_at_ms,
                None,
                None,
            )
        elif (
            e.kind == "remove"
            and (row := rows.get(e.override_id)) is not None
            and subjects.add(row[0] or "").remove_override(e.override_id) is not None
        ):
            rows[e.override_id] = (*row[:_REMOVED], e.at_ms, e.reason)
    return rows


def override_differences(
    live: Mapping[str, tuple[Any, ...]], rebuilt: Mapping[str, tuple[Any, ...]]
) -> list[tuple[str, str]]:
    """(subject, what differs) for every override whose live row is not its rebuild."""
    differences = []
    subject_at = OVERRIDE_COLUMNS.index("subject")
    for override_id in sorted(live.keys() | rebuilt.keys()):
        old, new = live.get(override_id), rebuilt.get(override_id)
        if old == new:
            continue
        subject = str((old or new or (None,))[subject_at] or "")
        if old is None:
            what = "in the log but missing from the live state"
        elif new is None:
            what = "in the live state but no logged set produces it"
        else:
            what = "; ".join(
                f"{name} live {a!r}, rebuilt {b!r}"
                for name, a, b in zip(OVERRIDE_COLUMNS, old, new, strict=True)
                if a != b
            )
        differences.append((subject, f"override {override_id}: {what}"))
    return differences
