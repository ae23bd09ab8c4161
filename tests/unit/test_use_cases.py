"""The use cases over in-memory ports (tests/support/fakes.py): apply, replay, grants, reads.
No PostgreSQL: the rules are tested on their own; the adapters' tests are in integration/."""

from __future__ import annotations

from typing import Any

import pytest

from service.adapters.cache import EntitlementCache
from service.application.deliveries import ApplyDelivery, DeliveryRules, ReplayDelivery
from service.application.grants import Grants
from service.application.ports import StoreUnavailable
from service.application.reads import EntitlementReader
from service.application.records import DeliverySelector, StoredDelivery
from service.application.replay import ReplayDeliveries
from service.config import load_catalog
from service.domain.deliveries import Delivery, Outcome
from service.domain.errors import InvalidArgument, NotFound
from service.domain.events import EventKind, NormalizedEvent
from tests.support import body, event
from tests.support.fakes import FakeClock, InMemoryStore, RecordedChanges

pytestmark = pytest.mark.unit

CATALOG = load_catalog(None)
DAY = 86_400_000


class World:
    """The use cases of one replica over in-memory ports."""

    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.clock = FakeClock()
        self.changes = RecordedChanges()
        self.rules = DeliveryRules(CATALOG, self.clock)
        self.apply = ApplyDelivery(self.store, self.rules, self.changes)
        self.replay_one = ReplayDelivery(self.store, self.rules, self.changes)
        self.grants = Grants(self.store, CATALOG, self.clock, self.changes)
        self.reads = EntitlementReader(self.store, CATALOG, None, self.clock)
        self._n = 0

    def delivery(self, payload: dict[str, Any] | bytes, event_id: str | None = None) -> Delivery:
        self._n += 1
        raw = payload if isinstance(payload, bytes) else body(payload)
        now = self.clock.now_ms()
        return Delivery(event_id or f"msg_{self._n}", "", raw, now, now)

    def fixture(self, name: str, who: str = "user_a", ago_ms: int = 0) -> dict[str, Any]:
        return event(name, at_ms=self.clock.now_ms() - ago_ms, subject=who)

    async def plan(self, who: str) -> str:
        return (await self.reads.get(who)).entitlements.plan.name


@pytest.fixture
def world() -> World:
    return World()


async def test_a_delivery_is_applied_once_and_announced(world: World) -> None:
    delivery = world.delivery(world.fixture("item_active_pro_month"))
    first = await world.apply(delivery)
    again = await world.apply(delivery)
    assert (first.outcome, first.plan, first.previous_plan) == (Outcome.APPLIED, "pro", "free")
    assert first.committed and world.changes.changes == [(first.version, "user_a")]
    assert (again.outcome, again.plan, again.version) == (Outcome.DUPLICATE, "pro", first.version)
    assert await world.plan("user_a") == "pro"
    assert world.store.data.plan_changes == [("user_a", "free", "pro", first.version, "msg_1")]


async def test_an_older_event_is_stale_and_changes_nothing(world: World) -> None:
    await world.apply(world.delivery(world.fixture("item_canceled_pro", ago_ms=0)))
    stale = await world.apply(world.delivery(world.fixture("item_active_pro_month", ago_ms=DAY)))
    assert stale.outcome is Outcome.STALE and not stale.committed
    assert len(world.changes.changes) == 1


async def test_an_item_of_another_subject_is_ignored_whole(world: World) -> None:
    mine = world.fixture("item_active_pro_month", "user_a")
    await world.apply(world.delivery(mine))
    theirs = world.fixture("item_active_pro_month", "user_b", ago_ms=-1000)
    theirs["data"]["id"] = mine["data"]["id"]
    result = await world.apply(world.delivery(theirs))
    assert result.outcome is Outcome.IGNORED
    assert "belongs to another subject" in result.notes[-1]
    assert await world.plan("user_b") == "free"
    assert world.store.outcome(f"msg_{world._n}") is Outcome.IGNORED


async def test_a_delivery_that_cannot_be_applied_is_stored_unparseable(world: World) -> None:
    rules = world.rules

    class Exploding(DeliveryRules):
        async def apply_stored(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the database refused a value")

    apply = ApplyDelivery(world.store, Exploding(rules.catalog, rules.clock), world.changes)
    delivery = world.delivery(world.fixture("item_active_pro_month"))
    result = await apply(delivery)
    assert result.outcome is Outcome.UNPARSEABLE and "kept for replay" in result.notes[-1]
    assert world.store.outcome(delivery.event_id) is Outcome.UNPARSEABLE
    assert await world.plan("user_a") == "free"  # the failed unit left nothing behind
    replayed = await world.replay_one(delivery.event_id)
    assert replayed is not None and replayed.changed and await world.plan("user_a") == "pro"


async def test_an_unreachable_database_is_an_error_and_stores_nothing(world: World) -> None:
    world.store.fail_with = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        await world.apply(world.delivery(world.fixture("item_active_pro_month")))
    assert world.store.data.deliveries == {}


async def test_unreadable_bodies_are_stored_unparseable(world: World) -> None:
    for raw in (b"not json", b"[]", b"", b'{"data": [' * 5000):
        result = await world.apply(world.delivery(raw))
        assert result.outcome is Outcome.UNPARSEABLE, raw
    assert len(world.store.data.deliveries) == 4  # every verified delivery is stored


async def test_deletion_scrubs_the_subjects_payloads(world: World) -> None:
    await world.apply(world.delivery(world.fixture("item_active_pro_month")))
    deleted = await world.apply(world.delivery(world.fixture("user_deleted", ago_ms=-1000)))
    assert deleted.committed and deleted.plan == "free"
    rows = world.store.data.deliveries.values()
    assert all(b"ada@example.com" not in r.delivery.payload for r in rows)


async def test_unknown_plans_are_noted_and_map_to_the_default(world: World) -> None:
    payload = world.fixture("item_active_pro_month")
    payload["data"]["plan"]["slug"] = "platinum"
    payload["data"]["plan"]["id"] = payload["data"]["plan_id"] = "cplan_unknown"
    result = await world.apply(world.delivery(payload))
    assert any(n.startswith("unknown plan slug 'platinum'") for n in result.notes)
    assert result.plan == "free"


async def test_replay_is_exactly_once(world: World) -> None:
    delivery = world.delivery(world.fixture("item_active_pro_month"))
    await world.apply(delivery)
    replay = ReplayDeliveries(world.store, world.replay_one)
    batches = [p async for p in replay(DeliverySelector(subject="user_a"))]
    results = [r for p in batches for r in p.batch]
    assert [(r.result.outcome, r.changed) for r in results] == [(Outcome.APPLIED, False)]
    assert len(world.changes.changes) == 1


async def test_replay_with_a_parser_regression_keeps_the_state(world: World) -> None:
    delivery = world.delivery(world.fixture("item_active_pro_month"))
    await world.apply(delivery)

    def broken(stored: StoredDelivery) -> NormalizedEvent:
        return NormalizedEvent(EventKind.UNPARSEABLE, stored.type, error="parser bug")

    replay_one = ReplayDelivery(world.store, world.rules, world.changes, broken)
    replayed = await replay_one(delivery.event_id)
    assert replayed is not None and replayed.result.outcome is Outcome.APPLIED
    assert await world.plan("user_a") == "pro"
    assert world.store.outcome(delivery.event_id) is Outcome.APPLIED


async def test_grant_and_revoke(world: World) -> None:
    grant_id, granted = await world.grants.grant("user_g", "pro", None, " support ")
    assert (granted.plan, granted.previous_plan, granted.committed) == ("pro", "free", True)
    assert await world.plan("user_g") == "pro"
    revoked = await world.grants.revoke(grant_id, "done")
    assert (revoked.plan, revoked.previous_plan) == ("free", "pro")
    with pytest.raises(NotFound):
        await world.grants.revoke(grant_id, "again")
    assert [s for _, s in world.changes.changes] == ["user_g", "user_g"]


@pytest.mark.parametrize(
    ("plan", "expires_in", "reason", "message"),
    [
        ("gold", None, "r", "unknown plan"),
        ("pro", None, "  ", "reason is required"),
        ("pro", -1, "r", "in the future"),
        ("pro", 10**18, "r", "before year 10000"),
    ],
)
async def test_bad_grants_are_refused_and_change_nothing(
    world: World, plan: str, expires_in: int | None, reason: str, message: str
) -> None:
    expires = None if expires_in is None else world.clock.now_ms() + expires_in
    with pytest.raises(InvalidArgument, match=message):
        await world.grants.grant("user_g", plan, expires, reason)
    assert world.store.units == 0


async def test_a_grant_expires_without_a_write(world: World) -> None:
    await world.grants.grant("user_g", "pro", world.clock.now_ms() + DAY, "trial")
    assert await world.plan("user_g") == "pro"
    world.clock.advance(DAY)
    assert await world.plan("user_g") == "free"


async def test_reads_use_the_cache_once_filled(world: World) -> None:
    cache = EntitlementCache(10)
    cache.set_live(True)
    reads = EntitlementReader(world.store, CATALOG, cache, world.clock)
    await world.apply(world.delivery(world.fixture("item_active_pro_month")))
    first = await reads.get("user_a")
    units = world.store.units
    assert await reads.get("user_a") is first and world.store.units == units
    cache.invalidate("user_a")
    assert (await reads.get("user_a")) is not first
