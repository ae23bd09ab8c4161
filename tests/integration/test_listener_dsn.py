"""ENTITLEMENTS_LISTEN_DATABASE_URL: the NOTIFY listener connects there, not to DATABASE_URL."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.conftest import start_harness
from tests.support import Clock
from tests.support.service_process import free_port

pytestmark = pytest.mark.integration


async def listener_live(dsn: str, listen_dsn: str | None, clock: Clock) -> bool:
    gen = start_harness(dsn, clock, listen_database_url=listen_dsn)
    h = await anext(gen)
    try:
        assert h.running.cache is not None
        for _ in range(100):
            if h.running.cache.live:
                return True
            await asyncio.sleep(0.02)
        return False
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(gen)


async def test_the_listener_uses_its_own_dsn(database_url: str, clock: Clock) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    assert not await listener_live(database_url, nowhere, clock)
    assert await listener_live(database_url, database_url, clock)
    assert await listener_live(database_url, None, clock)  # unset: DATABASE_URL
