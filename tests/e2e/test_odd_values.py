"""Signed but odd deliveries through real processes: gateway → service → reads → Watch.

Every verified delivery is stored whatever it holds (200, UNPARSEABLE when it cannot be read or
applied), no value breaks a read, and one subject's odd data never fails another subject's
answer, a batch or a Watch stream (SPEC §9).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from tests.support import db_query, event, now_ms
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

EXTREME: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [
            253402300800000000,  # microseconds past year 9999
            253402300799999,  # the last millisecond of year 9999
            1e20,
            1e30,
            2**63,
            2**63 - 1,
            -1,
            0,
            1,
            10**11 - 1,
            "1764000000",
            None,
            "soon",
            [],
            {},
            True,
        ]
    ),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(database_url, tmp_path_factory.mktemp("odd")) as s:
        yield s


class Watcher:
    """A WatchEntitlements stream over all subjects, read on a thread; records what it saw."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.subjects: set[str] = set()
        self.error: grpc.RpcError | None = None
        stub = pb_grpc.EntitlementServiceStub(self.channel)
        self.call = stub.WatchEntitlements(pb.WatchEntitlementsRequest())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                if message.subject:
                    self.subjects.add(message.subject)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self.error = exc

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=5)
        self.channel.close()


def _subject() -> str:
    return f"user_odd_{secrets.token_hex(5)}"


def _outcome(stack: Stack, event_id: str) -> str:
    rows = db_query(
        stack.database_url, "SELECT outcome FROM deliveries WHERE event_id = $1", event_id
    )
    return str(rows[0]["outcome"]) if rows else "missing"


def _reads_work(stack: Stack, subjects: list[str]) -> dict[str, str]:
    with grpc.insecure_channel(stack.service_target) as channel:
        stub = pb_grpc.EntitlementServiceStub(channel)
        plans = {}
        for subject in subjects:
            plans[subject] = stub.GetEntitlements(
                pb.GetEntitlementsRequest(subject=subject), timeout=10
            ).plan
            stub.CanUse(pb.CanUseRequest(subject=subject, feature="aiInsights"), timeout=10)
            stub.GetLimits(pb.GetLimitsRequest(subject=subject), timeout=10)
        batch = stub.BatchCanUse(
            pb.BatchCanUseRequest(
                checks=[pb.CanUseRequest(subject=s, feature="advancedAnalytics") for s in subjects]
            ),
            timeout=10,
        )
        assert len(batch.results) == len(subjects)
        return plans


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    field=st.sampled_from(["timestamp", "period_end", "past_due_at", "updated_at"]),
    value=EXTREME,
    fixture=st.sampled_from(["item_active_pro_month", "item_canceled_pro", "item_past_due_pro"]),
)
def test_extreme_values_are_stored_and_never_break_a_read(
    stack: Stack, field: str, value: Any, fixture: str
) -> None:
    watcher = Watcher(stack.service_target)
    try:
        odd, healthy = _subject(), _subject()
        payload = event(fixture, at_ms=now_ms(), subject=odd)
        if field == "timestamp":
            payload["timestamp"] = value
        else:
            payload["data"][field] = value
        msg_id = "msg_" + secrets.token_hex(10)
        answer = stack.send(json.dumps(payload).encode(), msg_id=msg_id)
        assert answer.status == 200, (answer.status, answer.body[:200])
        assert _outcome(stack, msg_id) in {"APPLIED", "STALE", "UNPARSEABLE"}
        ok = stack.send(event("item_active_pro_month", at_ms=now_ms(), subject=healthy))
        assert ok.status == 200 and ok.json() == {"outcome": "APPLIED"}
        plans = _reads_work(stack, [odd, healthy, odd])
        assert plans[healthy] == "pro"
        # A fresh Watch from the start of the log reads every change, odd ones included.
        with grpc.insecure_channel(stack.service_target) as channel:
            replay = pb_grpc.EntitlementServiceStub(channel).WatchEntitlements(
                pb.WatchEntitlementsRequest(subjects=[odd, healthy], since_version=0),
                timeout=10,
            )
            for message in replay:
                if not message.subject:
                    break  # caught up without an error
        deadline = now_ms() + 10_000
        while healthy not in watcher.subjects and now_ms() < deadline and watcher.error is None:
            threading.Event().wait(0.05)
        assert watcher.error is None, watcher.error
        assert healthy in watcher.subjects
    finally:
        watcher.close()


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b'[{"type":"user.created"}]',
        b"",
        b'{"type":"subscriptionItem.active","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({"type": "subscriptionItem.active\ud800\u0000", "data": {"id": "x"}}).encode(),
    ],
    ids=["not_json", "array", "empty", "deep_data", "deep_body", "odd_type"],
)
def test_signed_unreadable_bodies_are_stored_unparseable(stack: Stack, body: bytes) -> None:
    msg_id = "msg_" + secrets.token_hex(10)
    answer = stack.send(body, msg_id=msg_id)
    assert answer.status == 200, (answer.status, answer.body[:200])
    assert answer.json() == {"outcome": "UNPARSEABLE"}
    assert _outcome(stack, msg_id) == "UNPARSEABLE"
    assert stack.send(body, msg_id=msg_id).json() == {"outcome": "DUPLICATE"}


def test_a_value_the_database_refuses_is_stored_unparseable(stack: Stack) -> None:
    """A NUL in a plan slug passes the parser but not PostgreSQL's text type: applying fails,
    the raw delivery is kept UNPARSEABLE (200, so Svix stops), and nothing else changes."""
    subject = _subject()
    msg_id = "msg_" + secrets.token_hex(10)
    payload = event("item_active_pro_month", at_ms=now_ms(), subject=subject, plan_slug="pro\0")
    answer = stack.send(payload, msg_id=msg_id)
    assert answer.status == 200 and answer.json() == {"outcome": "UNPARSEABLE"}
    assert _outcome(stack, msg_id) == "UNPARSEABLE"
    notes = db_query(stack.database_url, "SELECT notes FROM deliveries WHERE event_id = $1", msg_id)
    assert "could not be applied" in " ".join(notes[0]["notes"])
    assert stack.plan(subject) == "free"
    assert "Traceback" not in answer.body.decode()
