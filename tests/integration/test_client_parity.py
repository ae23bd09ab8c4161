"""One table of calls through the sync and the async client, each with and without the local
cache, against a real service: all four give the same outcome for every case — the answer,
or the same exception class with the same code and message (an unknown feature is
`InvalidArgument` whether the cache or the service refused it). The limit checks include
the shared vectors (tests/fixtures/limit_check_vectors.json) whose limit is free's maxHabits.
Also: `on_change` on both clients, `wait_synced` / `start` alike, and AdminClient's answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entitlements_client import (
    AdminClient,
    AsyncEntitlementsClient,
    EntitlementsClient,
    EntitlementsError,
    History,
    NotFound,
    PlanChange,
    Snapshot,
)
from tests.conftest import Harness
from tests.support import SYNC_SECRET, event, now_ms
from tests.support.rpc import apply, subject

pytestmark = pytest.mark.integration

METER = "aiInsightsPerMonth"
VECTORS = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "limit_check_vectors.json").read_text()
)["cases"]
FREE, PRO, FRESH = "{free}", "{pro}", "{fresh}"  # stand-ins, replaced per run


def _vector_args(case: dict[str, Any]) -> dict[str, Any]:
    return {"current_usage": case["current_usage"], "requested": case["requested"]}


CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("can_use", (FREE, "aiInsights"), {}),
    ("can_use", (FREE, "dataExport"), {}),
    ("can_use", (PRO, "dataExport"), {}),
    ("can_use", (FREE, "teleport"), {}),  # unknown: InvalidArgument, local or not
    ("can_use", (PRO, ""), {}),
    ("check", (PRO, "dataExport"), {}),
    ("check", (FREE, "teleport"), {}),
    ("get_limits", (FREE,), {}),
    ("get_limits", (PRO,), {}),
    ("check_limit", (PRO, "maxHabits", 10**9, 5), {}),  # unlimited
    ("check_limit", (FREE, "maxGoals", 3), {}),
    ("check_limit", (FREE, METER), {}),  # metered: always the service
    ("check_limit", (FREE, METER), {"requested": 21}),
    *[
        ("check_limit", (FREE, c["limit"].replace("seats", "maxHabits")), _vector_args(c))
        for c in VECTORS
        if c["limits"]["seats"] == {"value": 10, "unlimited": False}
    ],
    ("consume", (FRESH, METER, 15), {"idempotency_key": "k-parity"}),
    ("consume", (FRESH, METER, 15), {"idempotency_key": "k-parity"}),  # a retry: once
    ("consume", (FRESH, METER, 6), {"idempotency_key": "k-over"}),
    ("consume", (FRESH, "maxHabits"), {"idempotency_key": "k-not-metered"}),
    ("consume", (FRESH, METER, 0), {}),
    ("report_usage", (FRESH, METER), {"delta": 1, "set": 2}),
    ("release", ("rsv_nonexistent",), {}),
]


def _raised(exc: EntitlementsError) -> tuple[str, str, str, str]:
    return ("raised", type(exc).__name__, exc.code, exc.message)


def _sync_outcome(call: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    try:
        return call(*args, **kwargs)
    except EntitlementsError as exc:
        return _raised(exc)


class _CountCanUse:
    """Counts CanUse RPCs made while `can_use` cases run: none when the cache answers."""

    def __init__(self, rpcs: dict[str, Any]) -> None:
        self.real, self.calls = rpcs["CanUse"], 0
        rpcs["CanUse"] = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


async def _table(harness: Harness, kind: str, cached: bool, free: str, pro: str) -> list[Any]:
    fresh = subject(f"parity_{kind}_{cached}")
    names = {FREE: free, PRO: pro, FRESH: fresh}
    outcomes: list[Any] = []
    client: EntitlementsClient | AsyncEntitlementsClient
    client = (EntitlementsClient if kind == "sync" else AsyncEntitlementsClient)(
        harness.target, local_cache=cached
    )
    counted = _CountCanUse(client._rpcs)
    local_can_use_rpcs = 0
    for method, args, kwargs in [("start", (), {}), *CASES]:
        if method == "start" and cached:  # synced, and the two subjects held locally
            await _call(client, "start", [], {})
            assert await _call(client, "wait_synced", [10], {})
            for who in (free, pro):
                await _call(client, "snapshot", [who], {})
            continue
        before = counted.calls
        real = [names.get(a, a) if isinstance(a, str) else a for a in args]
        answer = await _call(client, method, real, {**kwargs})
        if method != "start":
            outcomes.append(answer)
        if method == "can_use":
            local_can_use_rpcs += counted.calls - before
    await _call(client, "close", [], {})
    if cached:
        assert local_can_use_rpcs == 0  # every can_use, refusals too, answered locally
    return outcomes


async def _call(
    client: EntitlementsClient | AsyncEntitlementsClient,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
) -> Any:
    """One call through either client: the sync one in a worker thread (the server runs in
    this event loop), its answer or the exception it raised, as `_raised` shows it."""
    bound = getattr(client, method)
    if isinstance(client, EntitlementsClient):
        return await asyncio.to_thread(_sync_outcome, bound, args, kwargs)
    try:
        return await bound(*args, **kwargs)
    except EntitlementsError as exc:
        return _raised(exc)


async def test_the_same_table_gives_the_same_outcomes_through_every_client(
    harness: Harness,
) -> None:
    free, pro = subject("parity_free"), subject("parity_pro")
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=pro))
    runs = {
        (kind, cached): await _table(harness, kind, cached, free, pro)
        for kind in ("sync", "async")
        for cached in (False, True)
    }
    first = runs[("sync", False)]
    for key, outcomes in runs.items():
        for case, expected, got in zip(CASES, first, outcomes, strict=True):
            assert got == expected, (key, case)
    # The table means something: refusals of both kinds, local and remote, are in it.
    by_case = dict(zip([c[0] + repr(c[1:]) for c in CASES], first, strict=False))
    assert by_case[f"can_use{((FREE, 'teleport'), {})!r}"][:3] == (
        "raised",
        "InvalidArgument",
        "INVALID_ARGUMENT",
    )
    raised = [o for o in first if isinstance(o, tuple) and o and o[0] == "raised"]
    assert {o[1] for o in raised} == {"InvalidArgument", "NotFound"}
    negative = [o for c, o in zip(CASES, first, strict=True) if c[2].get("current_usage") == -5]
    assert negative and negative[0][1] == "InvalidArgument"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_change_hears_a_watched_subjects_change(harness: Harness, kind: str) -> None:
    who = subject(f"onchange_{kind}")
    heard: list[tuple[str, str]] = []
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def record(name: str, snap: Snapshot) -> None:
        if name == who:
            heard.append((name, snap.plan))
            loop.call_soon_threadsafe(changed.set)

    async def record_async(name: str, snap: Snapshot) -> None:
        await asyncio.sleep(0)  # a coroutine: awaited by the watch task
        record(name, snap)

    if kind == "sync":
        client = EntitlementsClient(harness.target, local_cache=True, on_change=record)
        await asyncio.to_thread(client.start)
        assert await asyncio.to_thread(client.wait_synced, 10)
    else:
        aclient = AsyncEntitlementsClient(harness.target, local_cache=True, on_change=record_async)
        await aclient.start()
        assert await aclient.wait_synced(10)
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=who))
    async with asyncio.timeout(5):
        await changed.wait()
    assert heard[0] == (who, "pro")
    if kind == "sync":
        await asyncio.to_thread(client.close)
    else:
        await aclient.close()


async def test_start_and_wait_synced_behave_alike(harness: Harness) -> None:
    sync = EntitlementsClient(harness.target, local_cache=True)
    aio = AsyncEntitlementsClient(harness.target, local_cache=True)
    with pytest.raises(RuntimeError, match="start"):
        sync.wait_synced(1)
    with pytest.raises(RuntimeError, match="start"):
        await aio.wait_synced(1)
    await asyncio.to_thread(sync.start)
    await aio.start()
    assert await asyncio.to_thread(sync.wait_synced, 10) and await aio.wait_synced(10)
    await asyncio.to_thread(sync.close)
    await aio.close()
    plain, aplain = EntitlementsClient(harness.target), AsyncEntitlementsClient(harness.target)
    assert plain.wait_synced(0.1) is False and await aplain.wait_synced(0.1) is False
    plain.close()
    await aplain.close()


async def test_admin_client_answers_are_dataclasses(harness: Harness) -> None:
    who = subject("admin")
    admin = AdminClient(harness.target, secret=SYNC_SECRET)
    try:
        granted = await asyncio.to_thread(admin.grant, who, "pro", "support")
        assert isinstance(granted, PlanChange)
        assert (granted.subject, granted.plan, granted.previous_plan) == (who, "pro", "free")
        history = await asyncio.to_thread(admin.history, who)
        assert isinstance(history, History) and history.subject == who
        assert "grant" in {e.kind for e in history.entries}
        revoked = await asyncio.to_thread(admin.revoke, granted.grant_id, "done")
        assert (revoked.plan, revoked.previous_plan) == ("free", "pro")
        with pytest.raises(NotFound):
            await asyncio.to_thread(admin.revoke, "grant_nonexistent", "x")
    finally:
        admin.close()
