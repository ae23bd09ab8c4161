"""The client library against a real server: RPC answers, the local cache fed by the watch
(changes arrive, valid_until respected), and reconnect with resume."""

from __future__ import annotations

import asyncio

import pytest

from entitlements_client import AsyncEntitlementsClient, InvalidArgument
from tests.conftest import Harness
from tests.support import event, now_ms
from tests.support.rpc import apply, subject

pytestmark = pytest.mark.integration


async def test_async_client_without_cache(harness: Harness) -> None:
    who = subject("cl")
    async with AsyncEntitlementsClient(harness.target) as client:
        assert await client.can_use(who, "aiInsights")
        assert not await client.can_use(who, "dataExport")
        assert (await client.check(who, "dataExport")).reason == "REASON_FEATURE_NOT_IN_PLAN"
        limits = await client.get_limits(who)
        assert limits.plan == "free" and limits.limits["maxHabits"].value == 10
        check = await client.check_limit(who, "maxGoals", current_usage=3)
        assert not check.allowed and check.remaining == 0
        await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
        assert await client.can_use(who, "dataExport")


async def test_async_local_cache_follows_changes(harness: Harness) -> None:
    who = subject("local")
    async with AsyncEntitlementsClient(harness.target, local_cache=True) as client:
        async with asyncio.timeout(10):
            await client.wait_synced()
        assert client.cache is not None
        assert not await client.can_use(who, "dataExport")  # RPC, then cached
        assert client.cache.fresh(who) is not None
        await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
        async with asyncio.timeout(5):
            while not await client.can_use(who, "dataExport"):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        assert client.cache.fresh(who) is not None and client.cache.fresh(who).plan == "pro"  # type: ignore[union-attr]
        with pytest.raises(InvalidArgument, match="teleport"):
            await client.can_use(who, "teleport")


async def test_local_answer_is_not_used_past_valid_until(harness: Harness) -> None:
    t = now_ms()
    who = subject("vu")
    await apply(harness, event("item_active_pro_month", at_ms=t - 86_400_000, subject=who))
    canceled = event("item_canceled_pro", at_ms=t - 86_400_000, subject=who, period_end=t + 1500)
    canceled["timestamp"] = t
    await apply(harness, canceled)
    async with AsyncEntitlementsClient(harness.target, local_cache=True) as client:
        async with asyncio.timeout(10):
            await client.wait_synced()
        assert await client.can_use(who, "dataExport")
        assert client.cache is not None and client.cache.fresh(who) is not None
        await asyncio.sleep(max(0.0, (t + 1600 - now_ms()) / 1000))
        assert client.cache.fresh(who) is None  # expired locally: not trusted
        assert not await client.can_use(who, "dataExport")
