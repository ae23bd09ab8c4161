"""The local cache is never wrong past `max_staleness`, whatever changes under it (SPEC §10.5).

A real service process, a real client with its local cache, the machine's PostgreSQL. Each
test changes what the answers depend on while the client holds them — the database wiped and
recreated, a backup restored into the same database, the service restarted with another
catalog, the client's clock two minutes off — and then samples the client's answers: from
`max_staleness` after the service is back, every answer must be the service's.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements_client import EntitlementsClient, EntitlementsError
from entitlements_client import _cache as client_cache
from service.config import load_catalog
from tests.support import SYNC_SECRET, body, database_dsn, event, new_event_id, now_ms
from tests.support.service_process import free_port, service_process

pytestmark = pytest.mark.e2e

BOUND = 2.0  # the client's max_staleness (its minimum: two heartbeats)
FEATURE = "advancedAnalytics"  # pro has it, free does not
DEFAULT_CATALOG = Path(__file__).parents[2] / "service" / "default_catalog.toml"


async def _admin(admin_dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database(pg_admin_dsn: str) -> Iterator[tuple[str, str]]:
    """(admin dsn, dsn) of a database of this test's own, dropped afterwards."""
    name = f"ent_ident_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield pg_admin_dsn, database_dsn(pg_admin_dsn, name)
    finally:
        asyncio.run(_admin(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def _service(
    dsn: str, port: int, log: Path, catalog: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    env = {"DATABASE_URL": dsn, "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET}
    if catalog is not None:
        env["ENTITLEMENTS_CATALOG"] = str(catalog)
    with service_process(env, log, port) as running:
        yield running


def _apply(target: str, payload: dict[str, object]) -> None:
    with grpc.insecure_channel(target) as channel:
        response = sync_grpc.BillingSyncServiceStub(channel).ApplyBillingEvent(
            sync_pb.ApplyBillingEventRequest(
                event_id=new_event_id(), type=str(payload["type"]), payload=body(payload)
            ),
            metadata=(("authorization", f"Bearer {SYNC_SECRET}"),),
            timeout=10,
        )
    assert sync_pb.Outcome.Name(response.outcome) == "APPLIED"


def _held_locally(client: EntitlementsClient, subject: str, expected: bool) -> None:
    """The client answers `expected` from its local cache (synced, the subject held). An RPC
    answer is not cached when a heartbeat arrived while it was asked: ask until it is."""
    assert client.wait_synced(10)
    deadline = time.monotonic() + 5
    while True:
        assert client.can_use(subject, FEATURE) is expected
        if client.cache is not None and client.cache.fresh(subject) is not None:
            return
        assert time.monotonic() < deadline, "never held locally"
        time.sleep(0.05)


def _wrong_after(
    client: EntitlementsClient, subject: str, expected: bool, since: float, seconds: float
) -> list[tuple[float, bool]]:
    """Sample the client's answer for `seconds`; the samples later than `since` + BOUND that
    were not `expected` (each with its time after `since`)."""
    wrong = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        at = time.monotonic() - since
        try:
            answer = client.can_use(subject, FEATURE)
        except EntitlementsError:
            continue  # not an answer: the service is still coming back
        if at > BOUND and answer is not expected:
            wrong.append((round(at, 2), answer))
        time.sleep(0.05)
    return wrong


def _settled(client: EntitlementsClient, subject: str, expected: bool) -> None:
    """After the bound: synced again, and the local answer is the service's."""
    assert client.wait_synced(10)
    assert client.can_use(subject, FEATURE) is expected


def test_a_wiped_database_drops_the_local_answers(
    database: tuple[str, str], tmp_path: Path
) -> None:
    admin, dsn = database
    name = dsn.rsplit("/", 1)[1].split("?")[0]
    port, who = free_port(), f"user_wiped_{secrets.token_hex(4)}"
    with _service(dsn, port, tmp_path / "a.log") as (_, target):
        _apply(target, event("item_active_pro_month", at_ms=now_ms(), subject=who))
        client = EntitlementsClient(target, local_cache=True, max_staleness=BOUND)
        client.start()
        try:
            _held_locally(client, who, True)
            log_id = getattr(client.cache, "log_id", "")
        except BaseException:
            client.close()
            raise
    try:
        asyncio.run(
            _admin(
                admin,
                f'DROP DATABASE "{name}" WITH (FORCE)',
                f'CREATE DATABASE "{name}"',
            )
        )
        with _service(dsn, port, tmp_path / "b.log") as _:
            back = time.monotonic()
            assert _wrong_after(client, who, False, back, BOUND + 2.0) == []
            _settled(client, who, False)
            assert log_id and client.cache is not None
            assert client.cache.log_id not in ("", log_id)
    finally:
        client.close()


def test_a_restored_backup_drops_the_local_answers(
    database: tuple[str, str], tmp_path: Path
) -> None:
    """pg_restore --clean into the very same database (same oid, the old log_id restored)."""
    _, dsn = database
    port, who = free_port(), f"user_restored_{secrets.token_hex(4)}"
    dump = tmp_path / "backup.dump"
    with _service(dsn, port, tmp_path / "a.log") as (_, target):
        pro = event("item_active_pro_month", at_ms=now_ms() - 60_000, subject=who)
        _apply(target, pro)
        subprocess.run(["pg_dump", "-Fc", "-f", str(dump), dsn], check=True)  # W on pro
        ended = event("item_ended_pro", at_ms=now_ms(), subject=who)
        ended["data"]["id"] = pro["data"]["id"]
        _apply(target, ended)
        client = EntitlementsClient(target, local_cache=True, max_staleness=BOUND)
        client.start()
        try:
            _held_locally(client, who, False)
        except BaseException:
            client.close()
            raise
    try:
        subprocess.run(
            ["pg_restore", "--clean", "--if-exists", "--no-owner", "-d", dsn, str(dump)],
            check=True,
        )
        with _service(dsn, port, tmp_path / "b.log") as _:
            back = time.monotonic()
            assert _wrong_after(client, who, True, back, BOUND + 2.0) == []
            _settled(client, who, True)
    finally:
        client.close()


def test_a_backup_restored_under_a_running_service(
    database: tuple[str, str], tmp_path: Path
) -> None:
    """No restart: the replica notices the other change log itself (within a second), clears
    its cache and ends its streams; the client resyncs."""
    _, dsn = database
    port, who = free_port(), f"user_live_restore_{secrets.token_hex(4)}"
    dump = tmp_path / "backup.dump"
    with _service(dsn, port, tmp_path / "a.log") as (_, target):
        pro = event("item_active_pro_month", at_ms=now_ms() - 60_000, subject=who)
        _apply(target, pro)
        subprocess.run(["pg_dump", "-Fc", "-f", str(dump), dsn], check=True)
        ended = event("item_ended_pro", at_ms=now_ms(), subject=who)
        ended["data"]["id"] = pro["data"]["id"]
        _apply(target, ended)
        with EntitlementsClient(target, local_cache=True, max_staleness=BOUND) as client:
            _held_locally(client, who, False)
            subprocess.run(
                ["pg_restore", "--clean", "--if-exists", "--no-owner", "-d", dsn, str(dump)],
                check=True,
            )
            back = time.monotonic()
            assert _wrong_after(client, who, True, back, BOUND + 2.0) == []
            _settled(client, who, True)
        assert "the change log changed under this replica" in (tmp_path / "a.log").read_text()


def test_a_new_catalog_drops_the_local_answers(database: tuple[str, str], tmp_path: Path) -> None:
    _, dsn = database
    port, who = free_port(), f"user_catalog_{secrets.token_hex(4)}"
    with _service(dsn, port, tmp_path / "a.log") as (_, target):
        _apply(target, event("item_active_pro_month", at_ms=now_ms(), subject=who))
        client = EntitlementsClient(target, local_cache=True, max_staleness=BOUND)
        client.start()
        try:
            _held_locally(client, who, True)
        except BaseException:
            client.close()
            raise
    # The same plans, but pro no longer has FEATURE.
    text = DEFAULT_CATALOG.read_text()
    pro_section = text.index("[plans.pro]")
    end = text.index("[plans.lifetime]")
    changed = text[:pro_section] + text[pro_section:end].replace(f'  "{FEATURE}",\n', "", 1)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(changed + text[end:])
    assert FEATURE not in load_catalog(catalog).plans["pro"].features
    try:
        with _service(dsn, port, tmp_path / "b.log", catalog) as _:
            back = time.monotonic()
            assert _wrong_after(client, who, False, back, BOUND + 2.0) == []
            _settled(client, who, False)
            assert client.cache is not None
            assert client.cache.catalog_fingerprint == load_catalog(catalog).fingerprint
    finally:
        client.close()


@pytest.mark.parametrize("skew", [-120.0, 120.0])
def test_expiry_is_judged_on_the_servers_clock(
    skew: float, database: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canceled item's period ends in a few seconds: a client whose clock is two minutes
    slow must not answer pro after it; one two minutes fast must still answer locally
    before it."""
    _, dsn = database
    who = f"user_skew_{secrets.token_hex(4)}"
    # The client library's view of the wall clock, `skew` seconds off (its monotonic clock,
    # which no wall-clock change moves, stays right).
    skewed = types.SimpleNamespace(time=lambda: time.time() + skew, monotonic=time.monotonic)
    monkeypatch.setattr(client_cache, "time", skewed)
    with _service(dsn, free_port(), tmp_path / "s.log") as (_, target):
        period_end = now_ms() + 6_000
        canceled = event("item_canceled_pro", at_ms=now_ms(), subject=who)
        canceled["data"]["period_end"] = period_end
        _apply(target, canceled)
        with EntitlementsClient(target, local_cache=True, max_staleness=BOUND) as client:
            _held_locally(client, who, True)  # before the period end, held locally
            while now_ms() < period_end - 1_500:
                assert client.can_use(who, FEATURE) is True
                assert client.cache is not None and client.cache.fresh(who) is not None
                time.sleep(0.1)
            while now_ms() < period_end + 100:
                time.sleep(0.02)
            wrong = []
            for _ in range(40):  # two seconds past the end: never pro again
                if client.can_use(who, FEATURE) is not False:
                    wrong.append(now_ms() - period_end)
                time.sleep(0.05)
            assert wrong == []
