"""The gRPC port's own guards on what a caller sends: each method's request cap, a bounded
number of requests being received at once (a withheld one frees its slot after the receive
deadline), and the subjects one Watch stream may name."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from entitlements.v1 import entitlement_service_pb2 as pb
from service.entrypoints.grpc_api import receiving
from service.entrypoints.message_limits import READ_MESSAGE_BYTES, TOO_LARGE_MESSAGE
from tests.conftest import Harness, rpc_code, start_harness
from tests.support import Clock
from tests.support.h2_flood import Flood

pytestmark = pytest.mark.integration

LIST_PLANS = "/entitlements.v1.EntitlementService/ListPlans"


@pytest.fixture
async def narrow(
    database_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """One request received at a time, within half a second; Watch streams name at most 3."""
    monkeypatch.setattr(receiving, "RECEIVE_TIMEOUT_SECONDS", 0.5)
    async for h in start_harness(database_url, clock, max_receiving=1, watch_max_subjects=3):
        yield h


async def test_a_read_over_its_cap_is_refused_before_it_is_parsed(harness: Harness) -> None:
    request = pb.CanUseRequest(subject="s" * (READ_MESSAGE_BYTES + 1), feature="api")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.entitlements.CanUse(request, timeout=5)
    assert rpc_code(caught.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == TOO_LARGE_MESSAGE
    # Just under the cap it is an ordinary bad subject (too long), not a size refusal.
    request = pb.CanUseRequest(subject="s" * 60_000, feature="api")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.entitlements.CanUse(request, timeout=5)
    assert rpc_code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_withheld_request_frees_its_slot_at_the_receive_deadline(narrow: Harness) -> None:
    flood = Flood(narrow.target, LIST_PLANS, connections=1, streams=1, announced=10_000)
    with flood:
        await asyncio.sleep(0.2)  # the withheld request holds the one slot
        started = time.monotonic()
        plans = await narrow.entitlements.ListPlans(pb.ListPlansRequest(), timeout=5)
        waited = time.monotonic() - started
        await asyncio.sleep(0.2)
    assert plans.plans
    assert 0.1 < waited < 2.0, waited  # it waited for the slot, not for ever
    assert flood.report.answered == {str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]): 1}
    assert flood.report.messages == {receiving.RECEIVE_TIMEOUT_MESSAGE}


async def test_watch_names_at_most_its_cap_of_subjects(narrow: Harness) -> None:
    over = narrow.entitlements.WatchEntitlements(
        pb.WatchEntitlementsRequest(subjects=["a", "b", "c", "d"]), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await over.read()
    assert rpc_code(caught.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (caught.value.details() or "").startswith("at most 3 subjects per WatchEntitlements")
    at_cap = narrow.entitlements.WatchEntitlements(
        pb.WatchEntitlementsRequest(subjects=["a", "b", "c"]), timeout=5
    )
    first = await at_cap.read()
    assert isinstance(first, pb.WatchEntitlementsResponse)
    assert first.subject == ""  # the caught-up heartbeat
    at_cap.cancel()
