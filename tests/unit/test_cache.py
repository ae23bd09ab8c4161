"""The server cache's rules, with plain values: LRU bound, the generation guard against a
stale load landing after an invalidation, and no serving while the listener is down."""

from __future__ import annotations

import pytest

from service.adapters.cache import EntitlementCache
from service.application.records import CacheEntry
from service.config import load_catalog
from service.domain.events import ItemStatus, ItemUpdate
from service.domain.resolution import (
    ItemState,
    SubjectState,
    item_after_stale,
    item_after_update,
    resolve,
    with_items,
)

pytestmark = pytest.mark.unit

CATALOG = load_catalog(None)
T = 1_800_000_000_000


def entry(subject: str) -> CacheEntry:
    state = SubjectState(subject)
    return CacheEntry(state, resolve(state, CATALOG, T))


def live_cache(size: int = 3) -> EntitlementCache:
    cache = EntitlementCache(size)
    cache.set_live(True)
    return cache


def test_lru_evicts_the_least_recently_used() -> None:
    cache = live_cache(2)
    for s in ("a", "b"):
        assert cache.put(s, entry(s), cache.generation)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", entry("c"), cache.generation)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_a_load_started_before_an_invalidation_is_not_cached() -> None:
    cache = live_cache()
    generation = cache.generation  # a read begins
    cache.invalidate("a")  # a change commits meanwhile
    assert not cache.put("a", entry("a"), generation)
    assert cache.get("a") is None


def test_nothing_is_served_or_stored_while_not_live() -> None:
    cache = live_cache()
    cache.put("a", entry("a"), cache.generation)
    cache.set_live(False)
    assert cache.get("a") is None and len(cache) == 0
    assert not cache.put("a", entry("a"), cache.generation)
    cache.set_live(True)
    assert len(cache) == 0  # notifications may have been missed: start empty


def update(item_id: str, status: ItemStatus, slug: str = "pro", ms: int = T) -> ItemUpdate:
    return ItemUpdate(item_id, "user_1", status, slug, None, None, None, False, ms, "d")


def test_item_transitions_mirror_the_store_upsert() -> None:
    old = ItemState("i1", ItemStatus.ACTIVE, "lifetime", None, None, None, T - 5, True)
    state = SubjectState("user_1", (old,))
    ended = item_after_update(old, update("i1", ItemStatus.ENDED, "lifetime"))
    fresh = item_after_update(None, update("i2", ItemStatus.ACTIVE))
    after = with_items(state, [ended, fresh])
    items = {i.item_id: i for i in after.items}
    assert items["i1"].status is ItemStatus.ENDED and items["i1"].ever_active  # only grows
    assert items["i2"].ever_active and items["i2"].status is ItemStatus.ACTIVE
    stored = ItemState("i3", ItemStatus.ENDED, "lifetime", None, None, None, T)
    seen = item_after_stale(stored, update("i3", ItemStatus.ACTIVE, "lifetime", T - 10))
    assert seen.ever_active and seen.status is ItemStatus.ENDED and seen.event_ms == T
    flagged = with_items(SubjectState("user_1", (stored,)), [seen])
    assert resolve(flagged, CATALOG, T).plan.name == "lifetime"
    assert with_items(state, []) is state
