"""The client library's usage calls and per-customer terms against a real server (SPEC §10.1,
§10.2): every case runs through the sync client (in a worker thread, the server being in this
test's event loop) and the async client alike. A metered `check_limit` is always the service's
answer, even with a synced local cache; overrides reach a local cache within a second."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from entitlements_client import (
    AdminClient,
    AsyncEntitlementsClient,
    Consumption,
    EntitlementsClient,
    InvalidArgument,
    NotFound,
    Reservation,
    Settlement,
    Snapshot,
    Usage,
    UsageReport,
)
from tests.conftest import Harness
from tests.support import SYNC_SECRET, event, now_ms
from tests.support.rpc import apply, subject

pytestmark = pytest.mark.integration

METER = "aiInsightsPerMonth"


class Client:
    """One face for both clients: the sync one runs in a worker thread, so its blocking calls
    never hold the event loop the server runs in."""

    def __init__(self, inner: EntitlementsClient | AsyncEntitlementsClient) -> None:
        self.inner = inner

    @classmethod
    async def open(cls, kind: str, target: str, **options: Any) -> Client:
        if kind == "sync":
            sync = EntitlementsClient(target, **options)
            await asyncio.to_thread(sync.start)
            return cls(sync)
        client = AsyncEntitlementsClient(target, **options)
        await client.start()
        return cls(client)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self.inner, method)
        if isinstance(self.inner, EntitlementsClient):
            return await asyncio.to_thread(bound, *args, **kwargs)
        return await bound(*args, **kwargs)

    async def wait_synced(self) -> None:
        async with asyncio.timeout(10):
            while not self.inner.synced:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        if isinstance(self.inner, EntitlementsClient):
            await asyncio.to_thread(self.inner.close)
        else:
            await self.inner.close()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(harness: Harness, kind: str) -> AsyncIterator[Client]:
    c = await Client.open(kind, harness.target)
    yield c
    await c.close()


@pytest.fixture
async def cached(harness: Harness, kind: str) -> AsyncIterator[Client]:
    """A client with a synced local cache."""
    c = await Client.open(kind, harness.target, local_cache=True)
    await c.wait_synced()
    yield c
    await c.close()


@pytest.fixture
async def admin(harness: Harness) -> AsyncIterator[Callable[..., Any]]:
    a = AdminClient(harness.target, secret=SYNC_SECRET)

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(a, method), *args, **kwargs)

    yield call
    a.close()


async def test_consume_until_the_limit_and_a_retry_counts_once(client: Client) -> None:
    who = subject("cons")
    first: Consumption = await client("consume", who, METER, 15)
    assert (first.allowed, first.used, first.remaining, first.limit) == (True, 15, 5, 20)
    assert first.resets_at is not None and first.resets_at > datetime.now(UTC)
    assert not first.unlimited and not first.duplicate
    refused = await client("consume", who, METER, 6)
    assert (refused.allowed, refused.used, refused.remaining) == (False, 15, 5)
    k = "retry-" + secrets.token_hex(4)
    assert (await client("consume", who, METER, 2, idempotency_key=k)).used == 17
    again = await client("consume", who, METER, 2, idempotency_key=k)
    assert again.duplicate and (again.allowed, again.used) == (True, 17)
    # No key given: a fresh one per call, so two calls are two consumptions.
    assert (await client("consume", who, METER)).used == 18
    assert (await client("consume", who, METER)).used == 19


async def test_report_usage_by_delta_and_total(client: Client) -> None:
    who = subject("rep")
    added: UsageReport = await client("report_usage", who, METER, delta=3)
    assert (added.used, added.remaining, added.limit, added.duplicate) == (3, 17, 20, False)
    total = await client("report_usage", who, METER, set=25)  # past the limit: recorded
    assert (total.used, total.remaining) == (25, 0)
    fixed = await client("report_usage", who, METER, delta=-5, idempotency_key="fix-1")
    assert fixed.used == 20
    assert (await client("report_usage", who, METER, delta=-5, idempotency_key="fix-1")).duplicate
    for bad in ({}, {"delta": 1, "set": 2}):
        with pytest.raises(ValueError, match="exactly one of delta and set"):
            await client("report_usage", who, METER, **bad)


async def test_reserve_commit_and_release(client: Client) -> None:
    who = subject("res")
    held: Reservation = await client("reserve", who, METER, 10, ttl_seconds=60)
    assert held.allowed and held.reservation_id and held.expires_at is not None
    assert timedelta(seconds=50) < held.expires_at - datetime.now(UTC) <= timedelta(seconds=61)
    assert held.remaining == 10
    usage: Usage = await client("get_usage", who)
    meter = usage.meters[METER]
    assert (meter.used, meter.reserved, meter.remaining) == (0, 10, 10)
    too_much = await client("reserve", who, METER, 11)
    assert not too_much.allowed and too_much.reservation_id is None
    done: Settlement = await client("commit", held.reservation_id, 4)
    assert (done.used, done.remaining, done.unlimited) == (4, 16, False)
    other = await client("reserve", who, METER, 16)
    assert other.allowed and other.remaining == 0
    back = await client("release", other.reservation_id)
    assert (back.used, back.remaining) == (4, 16)
    again = await client("commit", other.reservation_id, 1)  # ended already: counts nothing
    assert (again.used, again.remaining) == (4, 16)
    with pytest.raises(NotFound):
        await client("release", "rsv_nonexistent")


async def test_get_usage_lists_every_meter_with_its_period(
    client: Client, harness: Harness
) -> None:
    free, pro = subject("guf"), subject("gup")
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=pro))
    await client("consume", pro, METER, 7)
    free_usage: Usage = await client("get_usage", free)
    pro_usage: Usage = await client("get_usage", pro)
    assert free_usage.subject == free and set(free_usage.meters) == {METER}
    assert (free_usage.meters[METER].used, free_usage.meters[METER].limit_value) == (0, 20)
    meter = pro_usage.meters[METER]
    assert (meter.used, meter.remaining, meter.limit_value) == (7, 493, 500)
    assert meter.period_start is not None and meter.resets_at is not None
    assert meter.period_start <= datetime.now(UTC) < meter.resets_at


async def test_bad_input_is_refused(client: Client) -> None:
    who = subject("bad")
    with pytest.raises(InvalidArgument, match="not metered"):
        await client("consume", who, "maxHabits")  # a limit, but not metered
    with pytest.raises(InvalidArgument, match="amount"):  # caught before any call
        await client("consume", who, METER, 0)
    with pytest.raises(ValueError, match="idempotency_key"):
        await client("consume", who, METER, 1, idempotency_key="")


class Counting:
    """Wraps one RPC of a client: counts the calls, and passes each on to the real server."""

    def __init__(self, rpcs: dict[str, Any], name: str) -> None:
        self.rpcs, self.name, self.real, self.calls = rpcs, name, rpcs[name], 0
        rpcs[name] = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


def _no_rpc(*args: object, **kwargs: object) -> object:
    raise AssertionError("an RPC was made: the local cache should have answered")


async def test_a_metered_check_is_always_the_services_answer(
    cached: Client, client: Client
) -> None:
    """The cache is synced and holds the subject, yet a metered check goes to the service and
    reflects what another client consumed; a limit the service does not meter is answered
    locally (with the check RPCs taken away)."""
    who = subject("meter")
    first = await cached("check_limit", who, METER)
    assert (first.allowed, first.limit, first.remaining) == (True, 20, 20)
    snap: Snapshot = await cached("snapshot", who)
    cache = cached.inner.cache
    assert cache is not None and cache.fresh(who) is snap
    assert METER in snap.metered and snap.metered[METER].resets_at is not None
    assert METER in cache.metered

    assert (await client("consume", who, METER, 18)).allowed  # another client's usage
    rpcs: dict[str, Any] = cached.inner._rpcs
    counted = Counting(rpcs, "CheckLimit")
    after = await cached("check_limit", who, METER, current_usage=0, requested=2)
    assert (after.allowed, after.remaining) == (True, 2)
    over = await cached("check_limit", who, METER, requested=3)
    assert (over.allowed, over.remaining, over.limit) == (False, 2, 20)
    assert counted.calls == 2
    assert cache.fresh(who) is snap  # still cached: the cache was fresh, and not used

    rpcs["CheckLimit"] = rpcs["GetEntitlements"] = _no_rpc
    assert (await cached("check_limit", who, "maxHabits", 9)).allowed  # local
    assert not (await cached("check_limit", who, "maxHabits", 10)).allowed


async def _within(seconds: float, probe: Callable[[], Any]) -> float:
    """Poll `probe` until it is true; how long that took (fails past `seconds`)."""
    start = time.monotonic()
    while not await probe():
        assert time.monotonic() - start < seconds, "not seen in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_overrides_reach_a_synced_local_cache_within_a_second(
    cached: Client, admin: Callable[..., Any], harness: Harness
) -> None:
    who = subject("ovr")
    assert not await cached("can_use", who, "dataExport")  # cached now
    cache = cached.inner.cache
    assert cache is not None and cache.fresh(who) is not None
    expires = datetime.now(UTC) + timedelta(days=30)
    granted = await admin(
        "set_override", who, feature="dataExport", enabled=True, expires_at=expires, reason="beta"
    )
    assert granted.override_id and granted.version > 0

    async def local_has(feature: str, allowed: bool) -> bool:
        snap = cache.fresh(who)  # answered from the watch-fed cache, not an RPC
        return snap is not None and (feature in snap.features) == allowed

    await _within(1.0, lambda: local_has("dataExport", True))
    assert await cached("can_use", who, "dataExport")
    assert (await cached("check", who, "dataExport")).reason == "REASON_FEATURE_OVERRIDE_ENABLED"
    [shown] = (await cached("snapshot", who)).overrides
    assert (shown.override_id, shown.feature, shown.enabled, shown.reason) == (
        granted.override_id,
        "dataExport",
        True,
        "beta",
    )
    assert shown.expires_at is not None and abs(shown.expires_at - expires) < timedelta(seconds=1)

    withheld = await admin("set_override", who, feature="aiInsights", enabled=False, reason="abuse")
    await _within(1.0, lambda: local_has("aiInsights", False))
    limit = await admin("set_override", who, limit="maxHabits", value=50, reason="big account")

    async def local_limit() -> bool:
        snap = cache.fresh(who)
        return snap is not None and snap.limits["maxHabits"].value == 50

    await _within(1.0, local_limit)
    rpcs: dict[str, Any] = cached.inner._rpcs
    real = dict(rpcs)
    rpcs["CanUse"] = rpcs["GetEntitlements"] = rpcs["CheckLimit"] = _no_rpc
    assert not await cached("can_use", who, "aiInsights")
    assert (await cached("check_limit", who, "maxHabits", 49)).allowed
    rpcs.update(real)

    # A metered limit's override: the service's answer (and its usage) follow it at once.
    await admin("set_override", who, limit=METER, unlimited=True, reason="unlimited AI")
    assert (await cached("check_limit", who, METER, requested=10_000)).unlimited

    for removed in (granted, withheld, limit):
        await admin("remove_override", removed.override_id, reason="done")
    await _within(1.0, lambda: local_has("dataExport", False))
    await _within(1.0, lambda: local_has("aiInsights", True))

    async def back_to_plan() -> bool:
        snap = cache.fresh(who)
        return snap is not None and snap.limits["maxHabits"].value == 10

    await _within(1.0, back_to_plan)
    snap = cache.fresh(who)
    assert snap is not None
    assert [o.limit for o in snap.overrides] == [METER]


async def test_a_trial_shows_in_the_snapshot(client: Client, harness: Harness) -> None:
    who = subject("trial")
    end = now_ms() + 14 * 86_400_000
    await apply(
        harness,
        event("item_active_pro_month", at_ms=now_ms(), subject=who, is_free_trial=True,
              period_end=end),
    )  # fmt: skip
    snap = await client("snapshot", who)
    assert snap.trial and snap.plan == "pro"
    assert snap.trial_ends_at == datetime.fromtimestamp(end / 1000, UTC)
    assert not (await client("snapshot", subject("notrial"))).trial


async def test_admin_override_arguments_are_checked_before_sending(
    admin: Callable[..., Any],
) -> None:
    who = subject("args")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"feature": "dataExport"}, "enabled"),  # never sent as "withhold"
        ({"feature": "dataExport", "limit": "maxHabits", "enabled": True}, "exactly one"),
        ({"limit": "maxHabits"}, "value and unlimited"),
        ({"limit": "maxHabits", "value": 3, "unlimited": True}, "value and unlimited"),
        ({"limit": "maxHabits", "enabled": True, "value": 3}, "not enabled"),
        ({"feature": "dataExport", "enabled": True, "value": 3}, "not a value"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            await admin("set_override", who, reason="r", **kwargs)
    with pytest.raises(ValueError, match="reason"):
        await admin("set_override", who, feature="dataExport", enabled=True, reason=" ")
    with pytest.raises(NotFound):
        await admin("remove_override", "ovr_nonexistent")
