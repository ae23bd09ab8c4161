"""The two stores the repository contract suite (tests/integration/contract) runs against: the
in-memory fake the unit tests use and PostgreSQL (the truth). Each comes with a probe reading
what the ports write but do not read back (the change log, plan changes, a delivery's notes),
so one suite checks both."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import asyncpg

from service.adapters.postgres.store import Store
from service.application.ports import UnitOfWork
from service.application.records import DeliverySelector, StoredDelivery
from service.domain.deliveries import Delivery
from service.domain.events import EventKind, NormalizedEvent
from service.domain.resolution import SubjectState
from service.domain.usage import Counter
from tests.support.fakes import InMemoryStore

T = TypeVar("T")

T0 = 1_790_000_000_000  # 2026-09: inside the plausible window both stores keep
S = "user_contract"

TABLES = (
    "subjects, items, deliveries, plan_changes, change_log, grants, overrides, "
    "usage_counters, usage_records, usage_reservations"
)


class ContractStore(Protocol):
    """Transactions, StateReader and UsageReader: what the suite drives."""

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T: ...

    async def load_states(self, subjects: Sequence[str]) -> dict[str, SubjectState]: ...

    async def counters(self, subject: str, now_ms: int) -> dict[str, Counter]: ...

    async def count_deliveries(self, selector: DeliverySelector) -> int: ...

    async def deliveries_page(
        self, selector: DeliverySelector, after: str, limit: int
    ) -> list[StoredDelivery]: ...


class Probe(Protocol):
    async def change_log(self) -> list[tuple[int, str]]:
        """(version, subject) in version order."""

    async def plan_changes(self) -> list[tuple[str, str, str, int, str]]:
        """(subject, from, to, version, cause event id) in version order."""

    async def delivery(self, event_id: str) -> tuple[str, list[str], str | None] | None:
        """A stored delivery's outcome, notes and subject."""

    async def usage_keys(self, subject: str, meter: str) -> list[str]:
        """The idempotency keys of the recorded calls of one counter, in their order."""


def delivery(
    event_id: str, subject: str | None = S, body: bytes | None = None, type_: str = ""
) -> tuple[Delivery, NormalizedEvent]:
    """A delivery received at T0 and its event (an item update of `subject`)."""
    kind = type_ or "subscriptionItem.active"
    payload = body if body is not None else json.dumps({"type": kind, "data": {}}).encode()
    return (
        Delivery(event_id, kind, payload, T0, T0 - 5, "webhook"),
        NormalizedEvent(EventKind.ITEMS, kind, subject, T0 - 5),
    )


@dataclass
class Backend:
    name: str
    store: ContractStore
    probe: Probe


class MemoryProbe:
    def __init__(self, store: InMemoryStore) -> None:
        self._store = store

    async def change_log(self) -> list[tuple[int, str]]:
        return list(self._store.data.change_log)

    async def plan_changes(self) -> list[tuple[str, str, str, int, str]]:
        return list(self._store.data.plan_changes)

    async def delivery(self, event_id: str) -> tuple[str, list[str], str | None] | None:
        row = self._store.data.deliveries.get(event_id)
        return None if row is None else (row.outcome.value, list(row.notes), row.subject)

    async def usage_keys(self, subject: str, meter: str) -> list[str]:
        records = self._store.data.usage.records
        return [k for (s, m, k) in records if (s, m) == (subject, meter)]


class PgProbe:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self._dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def change_log(self) -> list[tuple[int, str]]:
        rows = await self._fetch("SELECT version, subject FROM change_log ORDER BY version")
        return [(r["version"], r["subject"]) for r in rows]

    async def plan_changes(self) -> list[tuple[str, str, str, int, str]]:
        rows = await self._fetch(
            "SELECT subject, from_plan, to_plan, version, cause_event_id FROM plan_changes "
            "ORDER BY version"
        )
        return [tuple(r.values()) for r in rows]

    async def delivery(self, event_id: str) -> tuple[str, list[str], str | None] | None:
        rows = await self._fetch(
            "SELECT outcome, notes, subject FROM deliveries WHERE event_id = $1", event_id
        )
        if not rows:
            return None
        return rows[0]["outcome"], list(rows[0]["notes"] or ()), rows[0]["subject"]

    async def usage_keys(self, subject: str, meter: str) -> list[str]:
        rows = await self._fetch(
            "SELECT idempotency_key FROM usage_records WHERE subject = $1 AND meter = $2 "
            "ORDER BY seq",
            subject,
            meter,
        )
        return [r["idempotency_key"] for r in rows]


@asynccontextmanager
async def open_backend(name: str, dsn: str) -> AsyncIterator[Backend]:
    """`memory`: a new InMemoryStore. `postgres`: the store on `dsn`, emptied, its version
    sequence restarted (so both stores number changes from 1)."""
    if name == "memory":
        memory = InMemoryStore()
        yield Backend(name, memory, MemoryProbe(memory))
        return
    store = await Store.open(dsn, min_size=1, max_size=2)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"TRUNCATE {TABLES} CASCADE")
            await conn.execute("ALTER SEQUENCE entitlement_version_seq RESTART WITH 1")
        finally:
            await conn.close()
        yield Backend(name, store, PgProbe(dsn))
    finally:
        await store.close()
