"""Helpers shared by the tests: fixture payloads shifted to "now", databases, clocks."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

FIXTURES = Path(__file__).parent.parent / "fixtures"
# Fixture timestamps are laid out around this instant (2026-01-01T00:00:00Z, ms).
FIXTURE_BASE_MS = 1767225600000
_MS_FIELDS = frozenset(
    {
        "timestamp",
        "period_start",
        "period_end",
        "canceled_at",
        "past_due_at",
        "created_at",
        "updated_at",
        "next_payment_date",
        "active_at",
        "paid_at",
    }
)
SYNC_SECRET = "test-sync-secret-" + "x" * 24
ADMIN_DSN = os.environ.get(
    "TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def now_ms() -> int:
    return int(time.time() * 1000)


def _shift(node: Any, delta: int) -> Any:
    if isinstance(node, dict):
        return {
            k: (v + delta if k in _MS_FIELDS and isinstance(v, int) else _shift(v, delta))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_shift(v, delta) for v in node]
    return node


def load_fixture(name: str, *, at_ms: int | None = None) -> dict[str, Any]:
    """A fixture payload with every timestamp shifted so that 2026-01-01 becomes `at_ms`."""
    raw = json.loads((FIXTURES / f"{name}.json").read_text())
    if at_ms is None:
        return copy.deepcopy(raw)
    shifted: dict[str, Any] = _shift(raw, at_ms - FIXTURE_BASE_MS)
    return shifted


def event(
    name: str,
    *,
    at_ms: int,
    timestamp_ms: int | None = None,
    subject: str | None = None,
    item_id: str | None = None,
    **data_overrides: Any,
) -> dict[str, Any]:
    """A fixture event shifted to `at_ms`, with its envelope time, payer and item overridable.

    With `subject`, item ids get the subject as a suffix, so tests sharing a database never
    share an item."""
    payload = load_fixture(name, at_ms=at_ms)
    if timestamp_ms is not None:
        payload["timestamp"] = timestamp_ms
    data = payload["data"]
    if subject is not None:
        payers = [data.get("payer")] + [i.get("payer") for i in data.get("items", [])]
        for payer in payers:
            if isinstance(payer, dict):
                key = "organization_id" if subject.startswith("org_") else "user_id"
                payer.pop("organization_id", None)
                payer.pop("user_id", None)
                payer[key] = subject
        if data.get("object") in ("user", "organization"):
            data["id"] = subject
    if item_id is not None:
        data["id"] = item_id
    if subject is not None:
        # Item ids are global in Clerk: keep each test subject's items its own.
        item_objects = [data, *data.get("items", [])]
        for item in item_objects:
            if item.get("object") == "commerce_subscription_item":
                item["id"] = f"{item['id']}_{subject}"
    for key, value in data_overrides.items():
        if key == "plan_slug":
            data["plan"]["slug"] = value
        else:
            data[key] = value
    return payload


def body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def new_event_id() -> str:
    return "msg_" + secrets.token_hex(12)


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin_reachable(admin_dsn: str) -> bool:
    try:
        asyncio.run(_admin(admin_dsn, "SELECT 1"))
        return True
    except (OSError, asyncpg.PostgresError):
        return False


def database_dsn(admin_dsn: str, name: str) -> str:
    """`admin_dsn` with its database name replaced (keeps a `?host=` socket query)."""
    head, _, query = admin_dsn.partition("?")
    base, _, _ = head.rpartition("/")
    return f"{base}/{name}" + (f"?{query}" if query else "")


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new, empty database on the given server, dropped afterwards."""
    name = f"ent_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield database_dsn(admin_dsn, name)
    finally:
        asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Clock:
    """Real time, unless a test freezes it at an instant ("time passes" without sleeping)."""

    def __init__(self) -> None:
        self.frozen_at: int | None = None

    def now_ms(self) -> int:
        return now_ms() if self.frozen_at is None else self.frozen_at

    def freeze(self, ms: int) -> None:
        self.frozen_at = ms


def db_query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query synchronously (for tests that drive real processes)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def db_state(dsn: str) -> tuple[int, list[Any], list[Any]]:
    """Deliveries stored, every item and every subject: to prove "nothing changed"."""
    deliveries = db_query(dsn, "SELECT count(*) AS n FROM deliveries")[0]["n"]
    items = [tuple(r) for r in db_query(dsn, "SELECT * FROM items ORDER BY item_id")]
    subjects = [tuple(r) for r in db_query(dsn, "SELECT * FROM subjects ORDER BY subject")]
    return deliveries, items, subjects


def kill_postgres(server: Any) -> None:
    """Crash a pgserver instance: SIGKILL its postmaster and every backend (no clean shutdown)."""
    import signal

    import psutil

    postmaster = psutil.Process(server.get_pid())
    family = [postmaster, *postmaster.children(recursive=True)]
    for proc in family:
        os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)
