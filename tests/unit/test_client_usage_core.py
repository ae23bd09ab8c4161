"""The client's pure parts for metered limits and overrides: which limit checks the local cache
may answer (never a metered one), what a snapshot carries (overrides, trial, periods; never
usage), and the usage requests both clients send. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_client import InvalidArgument, LimitValue, Snapshot
from entitlements_client._admin import override_request
from entitlements_client._cache import LocalCache
from entitlements_client._usage import (
    INT64_MAX,
    commit_request,
    consume_request,
    report_request,
    reserve_request,
)

pytestmark = pytest.mark.unit

METER = "aiInsightsPerMonth"


def ts(seconds: int) -> Timestamp:
    t = Timestamp()
    t.FromSeconds(seconds)
    return t


def message(subject: str, *, metered: bool = True) -> pb.GetEntitlementsResponse:
    m = pb.GetEntitlementsResponse(
        subject=subject,
        plan="free",
        features=["aiInsights", "dataExport"],
        limits={"maxHabits": pb.Limit(value=10), METER: pb.Limit(value=20)},
        version=3,
        overrides=[
            pb.Override(override_id="ovr_1", feature="dataExport", enabled=True, reason="beta"),
            pb.Override(
                override_id="ovr_2",
                limit="maxHabits",
                value=pb.Limit(value=10),
                expires_at=ts(2_000_000_000),
                reason="r",
            ),
        ],
        trial=True,
        trial_ends_at=ts(1_900_000_000),
    )
    if metered:  # as an RPC answer carries it: the period, and the usage at that instant
        m.metered.append(
            pb.MeteredLimit(
                limit=METER,
                period_start=ts(1_800_000_000),
                resets_at=ts(1_802_000_000),
                has_usage=True,
                used=19,
                remaining=1,
            )
        )
    return m


def synced_cache() -> LocalCache:
    cache = LocalCache()
    cache.apply(pb.WatchEntitlementsResponse(subject="", version=1))
    return cache


def test_a_snapshot_carries_overrides_trial_and_periods_but_no_usage() -> None:
    snap = Snapshot.from_message(message("user_a"))
    assert [o.override_id for o in snap.overrides] == ["ovr_1", "ovr_2"]
    grant, limit = snap.overrides
    assert (grant.feature, grant.limit, grant.enabled) == ("dataExport", None, True)
    assert grant.value is None
    assert (limit.limit, limit.value) == ("maxHabits", LimitValue(10, False))
    assert limit.expires_at == datetime.fromtimestamp(2_000_000_000, UTC)
    assert snap.trial and snap.trial_ends_at == datetime.fromtimestamp(1_900_000_000, UTC)
    period = snap.metered[METER]
    assert period.period_start == datetime.fromtimestamp(1_800_000_000, UTC)
    assert period.resets_at == datetime.fromtimestamp(1_802_000_000, UTC)
    assert not hasattr(period, "used")  # usage is never held where it could go stale


def test_a_metered_limit_is_never_answered_locally() -> None:
    cache = synced_cache()
    cache.apply(pb.WatchEntitlementsResponse(subject="user_a", entitlements=message("user_a")))
    snap = cache.fresh("user_a")
    assert snap is not None and cache.metered == {METER}
    assert cache.limit_answer(snap, METER, 0, 1) is None  # the service's to answer
    assert cache.limit_answer(snap, METER, 5, 1) is None  # even with the caller's count
    local = cache.limit_answer(snap, "maxHabits", 9, 1)
    assert local is not None and local.allowed and local.remaining == 1
    with pytest.raises(InvalidArgument, match="unknown limit"):
        cache.limit_answer(snap, "teleports", 0, 1)


def test_a_snapshot_that_lists_no_meters_does_not_make_one_local() -> None:
    """The service's fallback answer (a subject it could not resolve) lists no metered
    periods: what the cache learnt from other snapshots still keeps the check remote."""
    cache = synced_cache()
    cache.apply(pb.WatchEntitlementsResponse(subject="user_a", entitlements=message("user_a")))
    bare = message("user_b", metered=False)
    cache.apply(pb.WatchEntitlementsResponse(subject="user_b", entitlements=bare))
    snap = cache.fresh("user_b")
    assert snap is not None and not snap.metered
    assert cache.limit_answer(snap, METER, 0, 1) is None
    # Another catalog: its snapshots name its meters again.
    cache.plans_loaded(pb.ListPlansResponse(catalog_fingerprint="one"))
    cache.plans_loaded(pb.ListPlansResponse(catalog_fingerprint="two"))
    assert cache.metered == frozenset()


def test_usage_requests_get_a_fresh_key_unless_given() -> None:
    first = consume_request("user_a", METER, 1, None)
    second = consume_request("user_a", METER, 1, None)
    assert first.idempotency_key and first.idempotency_key != second.idempotency_key
    assert consume_request("user_a", METER, 2, "mine").idempotency_key == "mine"
    assert reserve_request("user_a", METER, 1, 0, None).idempotency_key
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        consume_request("user_a", METER, 1, "")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: consume_request("u", METER, 0, None), "amount"),
        (lambda: consume_request("u", METER, INT64_MAX + 1, None), "amount"),
        (lambda: reserve_request("u", METER, 1, -1, None), "ttl_seconds"),
        (lambda: commit_request("rsv_1", -1), "amount"),
        (lambda: report_request("u", METER, None, None, None), "exactly one"),
        (lambda: report_request("u", METER, 1, 1, None), "exactly one"),
        (lambda: report_request("u", METER, None, -1, None), "set"),
    ],
)
def test_bad_usage_arguments_are_refused_before_sending(build: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build()  # type: ignore[operator]


def test_report_and_commit_edges() -> None:
    assert report_request("u", METER, -5, None, "k").WhichOneof("change") == "delta"
    zero = report_request("u", METER, None, 0, "k")  # set to 0: carried, not "unset"
    assert zero.WhichOneof("change") == "set" and zero.set == 0
    assert commit_request("rsv_1", 0).amount == 0  # the work used nothing
    with pytest.raises(TypeError):
        consume_request("u", METER, True, None)


def test_an_override_request_never_sends_a_forgotten_enabled_as_withhold() -> None:
    with pytest.raises(InvalidArgument, match="enabled"):
        override_request("u", "dataExport", None, None, None, False, None, "r")
    off = override_request("u", "dataExport", None, False, None, False, None, "r")
    assert off.feature == "dataExport" and off.enabled is False
    unlimited = override_request("u", None, METER, None, None, True, None, "r")
    assert unlimited.unlimited and unlimited.value == 0 and not unlimited.HasField("expires_at")
    zero = override_request("u", None, "maxHabits", None, 0, False, datetime(2030, 1, 1), "r")
    assert zero.value == 0 and not zero.unlimited
    assert zero.expires_at.ToDatetime(tzinfo=UTC) == datetime(2030, 1, 1, tzinfo=UTC)
