"""Ordering property: any permutation, with duplicates, of a subject's events ends in the same
state as applying them in order (real PostgreSQL, the store's own guard)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.adapters.postgres.store import Store
from service.application.deliveries import ApplyDelivery, DeliveryRules
from service.application.ports import SystemClock
from service.config import load_catalog
from service.domain.deliveries import Delivery
from service.domain.resolution import resolve
from tests.support import now_ms
from tests.support.fakes import NoChanges

pytestmark = pytest.mark.integration

CATALOG = load_catalog(None)
DAY = 86_400_000
BASE = now_ms() - 10 * DAY

STATUSES = ["active", "canceled", "past_due", "ended", "upcoming", "incomplete", "abandoned"]
SLUGS = ["pro", "pro_yearly", "lifetime", "free_user", "some_unknown_thing"]


@st.composite
def event_specs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A subject's event sequence in event-time order: items with strictly growing times."""
    n = draw(st.integers(min_value=1, max_value=8))
    specs = []
    t = BASE
    for _ in range(n):
        t += draw(st.integers(min_value=1, max_value=2 * DAY))
        kind = draw(st.sampled_from(["item"] * 9 + ["deleted"]))
        if kind == "deleted":
            specs.append({"kind": "deleted", "ts": t})
            continue
        specs.append(
            {
                "kind": "item",
                "ts": t,
                "item": draw(st.sampled_from(["a", "b", "c"])),
                "status": draw(st.sampled_from(STATUSES)),
                "slug": draw(st.sampled_from(SLUGS)),
                "period_end": t + draw(st.sampled_from([-DAY, DAY, 20 * DAY])),
            }
        )
    return specs


def payload(spec: dict[str, Any], subject: str) -> bytes:
    if spec["kind"] == "deleted":
        return json.dumps(
            {"type": "user.deleted", "timestamp": spec["ts"], "data": {"id": subject}}
        ).encode()
    return json.dumps(
        {
            "type": f"subscriptionItem.{spec['status']}",
            "timestamp": spec["ts"],
            "data": {
                "id": f"subi_{spec['item']}_{subject}",
                "status": spec["status"],
                "plan": {"slug": spec["slug"]},
                "payer": {"user_id": subject},
                "period_end": spec["period_end"],
                "past_due_at": spec["ts"] if spec["status"] == "past_due" else None,
            },
        }
    ).encode()


def apply_delivery(store: Store) -> ApplyDelivery:
    """The apply use case over the real store (no replica around it: nobody to notify)."""
    return ApplyDelivery(store, DeliveryRules(CATALOG, SystemClock()), NoChanges())


async def _apply_all(
    store: Store, subject: str, specs: list[dict[str, Any]], order: list[int], concurrency: int
) -> None:
    ids = {i: f"msg_{subject}_{i}" for i in range(len(specs))}

    async def one(i: int) -> None:
        raw = payload(specs[i], subject)
        await apply_delivery(store)(Delivery(ids[i], "", raw, now_ms(), specs[i]["ts"]))

    for start in range(0, len(order), concurrency):
        await asyncio.gather(*(one(i) for i in order[start : start + concurrency]))


async def _snapshot(store: Store, subject: str) -> list[Any]:
    state = (await store.load_states([subject]))[subject]
    items = sorted(
        (i.item_id.split("_")[1], i.status, i.plan_slug, i.event_ms, i.ever_active)
        for i in state.items
    )
    views = []
    for at in (BASE, now_ms(), now_ms() + 5 * DAY, now_ms() + 40 * DAY):
        e = resolve(state, CATALOG, at)
        views.append((e.plan.name, e.status, e.valid_until_ms))
    return [items, state.deleted_at_ms, views]


async def _check(
    store: Store, specs: list[dict[str, Any]], order: list[int], concurrency: int
) -> None:
    tag = secrets.token_hex(4)
    in_order, shuffled = f"user_ord{tag}", f"user_shf{tag}"
    await _apply_all(store, in_order, specs, list(range(len(specs))), 1)
    await _apply_all(store, shuffled, specs, order, concurrency)
    assert await _snapshot(store, shuffled) == await _snapshot(store, in_order)


@pytest.fixture(scope="module")
def store_loop(database_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, Store]]:
    """One loop and one pool for all examples: hypothesis runs many, each must be cheap."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(database_url, min_size=1, max_size=4))
    try:
        yield loop, store
    finally:
        loop.run_until_complete(store.close())
        loop.close()


@given(data=st.data(), specs=event_specs(), concurrency=st.sampled_from([1, 3]))
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_permutation_with_duplicates_ends_in_the_in_order_state(
    store_loop: tuple[asyncio.AbstractEventLoop, Store],
    data: st.DataObject,
    specs: list[dict[str, Any]],
    concurrency: int,
) -> None:
    loop, store = store_loop
    indices = list(range(len(specs)))
    duplicates = data.draw(st.lists(st.sampled_from(indices), max_size=len(specs)))
    order = data.draw(st.permutations(indices + duplicates))
    loop.run_until_complete(_check(store, specs, order, concurrency))
