"""The notifier's decisions over in-memory ports: what a notice carries (plan terms, no
personal data, an id that depends on the state only), that changes of one subject between
two scans are one notice with the newest state, that a state already notified or older than
the last one is not sent again, and that a subject whose valid_until passed is looked at."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from service.application.notifications import Notice, Notified, Notifier, make_notice
from service.application.records import ChangeBatch
from service.config import load_catalog
from service.domain.resolution import Entitlements, EntitlementStatus, plan_entitlements

CATALOG = load_catalog(None)


def ent(subject: str, version: int, plan: str = "pro", until: int | None = None) -> Entitlements:
    return plan_entitlements(subject, CATALOG.plans[plan], EntitlementStatus.ACTIVE, until, version)


@dataclass
class Memory:
    """The outbox, the change log and the subjects' states, in memory."""

    changes: list[tuple[int, int, str]] = field(default_factory=list)
    states: dict[str, Entitlements] = field(default_factory=dict)
    last: dict[str, tuple[Notified, int | None]] = field(default_factory=dict)
    queued: list[Notice] = field(default_factory=list)
    position: int | None = 0

    # ScanTx
    async def due(self, now_ms: int, limit: int) -> list[str]:
        return [s for s, (_, until) in self.last.items() if until is not None and until <= now_ms]

    async def notified(self, subjects: Sequence[str]) -> dict[str, Notified]:
        return {s: self.last[s][0] for s in subjects if s in self.last}

    async def record(self, notices: Sequence[Notice], seen: Sequence[Notice], position: int) -> int:
        self.queued += notices
        for n in [*notices, *seen]:
            self.last[n.subject] = (Notified(n.version, n.fingerprint), n.valid_until_ms)
        self.position = position
        return len(notices)

    # Outbox
    @asynccontextmanager
    async def scanning(self, endpoints: Sequence[str]) -> AsyncIterator[Memory]:
        yield self

    async def oldest_pending_seconds(self) -> float:
        return 0.0

    async def follow(self, position: int, limit: int) -> ChangeBatch:
        found = [c for c in self.changes if c[0] >= position][:limit]
        top = max((c[0] for c in self.changes), default=position - 1) + 1
        return ChangeBatch(found, max(position, top), top, complete=True)

    async def horizon(self) -> tuple[int, int]:
        return 0, 0

    async def load(self, subjects: Sequence[str]) -> dict[str, Entitlements]:
        return {s: self.states[s] for s in subjects if s in self.states}

    def change(self, e: Entitlements) -> None:
        self.states[e.subject] = e
        self.changes.append((len(self.changes) + 1, e.version, e.subject))


def notifier(memory: Memory, now: list[int]) -> Notifier:
    return Notifier(
        memory, ["http://r"], memory.follow, memory.horizon, memory.load, lambda: now[0]
    )


async def test_changes_between_scans_are_one_notice_with_the_newest_state() -> None:
    memory, now = Memory(), [1_000]
    n = notifier(memory, now)
    memory.change(ent("user_a", 1, "free"))
    memory.change(ent("user_a", 2, "pro"))
    memory.change(ent("user_b", 3, "pro"))
    assert (await n.scan_once())[0] == 2
    a = next(q for q in memory.queued if q.subject == "user_a")
    body = json.loads(a.body)
    assert body["type"] == "entitlements.changed"
    assert body["data"]["version"] == 2 and body["data"]["plan"] == "pro"
    assert set(body["data"]) == {"subject", "plan", "features", "limits", "version", "valid_until"}
    assert (await n.scan_once())[0] == 0  # nothing new


async def test_a_state_already_sent_or_older_is_not_sent_again() -> None:
    memory, now = Memory(), [1_000]
    n = notifier(memory, now)
    memory.change(ent("user_c", 5))
    await n.scan_once()
    memory.change(ent("user_c", 5))  # committed again, same answer
    memory.change(replace(ent("user_c", 4, "free")))  # a stale read: older than what was sent
    assert (await n.scan_once())[0] == 0
    assert [q.version for q in memory.queued] == [5]


async def test_a_change_by_time_alone_is_noticed_and_its_id_depends_on_the_state_only() -> None:
    memory, now = Memory(), [1_000]
    n = notifier(memory, now)
    memory.change(ent("user_t", 7, "pro", until=5_000))
    await n.scan_once()
    memory.states["user_t"] = ent("user_t", 7, "free")  # what resolving after 5 000 gives
    assert (await n.scan_once())[0] == 0  # not due yet
    now[0] = 5_000
    assert (await n.scan_once())[0] == 1
    first, second = memory.queued
    assert first.version == second.version == 7 and first.message_id != second.message_id
    assert json.loads(second.body)["data"]["valid_until"] is None
    again = make_notice(ent("user_t", 7, "free"), 99_999)
    assert again.message_id == second.message_id  # whoever makes it, whenever


async def test_changes_pruned_before_the_notifier_read_them_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory, now = Memory(), [1_000]
    memory.position = 3  # the log was pruned up to 10 while no replica ran
    memory.states["user_a"] = ent("user_a", 1)
    memory.changes.append((10, 1, "user_a"))  # what is left of it

    async def bounds() -> tuple[int, int]:
        return 10, 20

    late = Notifier(
        memory,
        ["http://r"],
        memory.follow,
        memory.horizon,
        memory.load,
        lambda: now[0],
        bounds=bounds,
    )
    with caplog.at_level(logging.ERROR, logger="service.application.notifications"):
        await late.scan_once()
        await late.scan_once()  # checked at most once a minute
    missed = [r for r in caplog.records if "notifications missed the changes" in r.getMessage()]
    assert len(missed) == 1 and "positions 3 and 10" in missed[0].getMessage()
    caplog.clear()
    now[0] += 61_000  # caught up since: nothing to say
    await late.scan_once()
    assert not [r for r in caplog.records if "missed" in r.getMessage()]
