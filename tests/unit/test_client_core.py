"""The client's pure core: when a local answer may be given (heartbeats, lag, the bound), and
which RPC answers may be cached. A fake monotonic clock; no I/O."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements_client import ClientConfigError, Snapshot
from entitlements_client._cache import LocalCache

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beat(version: int, lag_ms: int = 0) -> pb.WatchEntitlementsResponse:
    lag = Duration()
    lag.FromMilliseconds(lag_ms)
    return pb.WatchEntitlementsResponse(subject="", version=version, lag=lag)


def change(subject: str, plan: str, version: int) -> pb.WatchEntitlementsResponse:
    return pb.WatchEntitlementsResponse(
        subject=subject,
        entitlements=pb.GetEntitlementsResponse(subject=subject, plan=plan, version=version),
        version=version,
    )


def snapshot(subject: str, plan: str, version: int) -> Snapshot:
    return Snapshot(subject, plan, frozenset(), {}, None, version)


def test_local_answers_only_within_max_staleness_of_the_last_heartbeat() -> None:
    clock = FakeClock()
    cache = LocalCache(max_staleness=5, clock=clock)
    assert not cache.synced  # nothing heard yet
    cache.apply(change("user_a", "pro", 7))
    assert not cache.synced and cache.fresh("user_a") is None  # no heartbeat yet
    cache.apply(beat(10))
    assert cache.synced and cache.fresh("user_a") is not None
    clock.now += 4.9
    assert cache.synced
    clock.now += 0.2  # 5.1 s since the last heartbeat
    assert not cache.synced and cache.fresh("user_a") is None
    cache.apply(beat(11))
    assert cache.synced


def test_the_servers_lag_counts_toward_the_bound() -> None:
    clock = FakeClock()
    cache = LocalCache(max_staleness=5, clock=clock)
    cache.apply(beat(10, lag_ms=4_500))
    assert cache.synced
    clock.now += 0.6
    assert not cache.synced  # 4.5 s behind at the server + 0.6 s since


def test_an_rpc_answer_older_than_the_stream_is_not_cached() -> None:
    cache = LocalCache(max_staleness=5, clock=FakeClock())
    cache.apply(beat(10))
    cache.apply(change("user_a", "free", 42))  # the stream saw version 42
    cache.entries.clear()  # evicted meanwhile
    generation = cache.generation
    cache.put_from_rpc(snapshot("user_a", "pro", 41), generation)  # a lagging replica
    assert "user_a" not in cache.entries
    cache.put_from_rpc(snapshot("user_a", "free", 42), generation)
    assert cache.entries["user_a"].plan == "free"


def test_an_rpc_answer_is_not_cached_when_the_stream_moved_on_meanwhile() -> None:
    cache = LocalCache(max_staleness=5, clock=FakeClock())
    cache.apply(beat(10))
    generation = cache.generation
    cache.apply(beat(11))
    cache.put_from_rpc(snapshot("user_b", "pro", 1), generation)
    assert "user_b" not in cache.entries


def test_a_lost_stream_is_not_trusted_until_it_beats_again() -> None:
    clock = FakeClock()
    cache = LocalCache(max_staleness=5, clock=clock)
    cache.apply(beat(10))
    cache.lost()
    assert not cache.synced
    cache.apply(beat(12))
    assert cache.synced and cache.resume_version == 12


def test_silence_is_noticed_and_the_bound_is_checked() -> None:
    clock = FakeClock()
    cache = LocalCache(max_staleness=3, clock=clock)
    cache.stream_started()
    clock.now += 2
    assert not cache.silent_too_long()
    clock.now += 1.5
    assert cache.silent_too_long()
    with pytest.raises(ClientConfigError, match="max_staleness"):
        LocalCache(max_staleness=0.5)


# ---- what the answers depend on: the change log, the catalog, the server's clock ---------------


def identified_beat(
    version: int, log_id: str = "log-a", fingerprint: str = "cat-1", server_ms: int | None = None
) -> pb.WatchEntitlementsResponse:
    message = beat(version)
    message.log_id, message.catalog_fingerprint = log_id, fingerprint
    if server_ms is not None:
        message.server_time.FromMilliseconds(server_ms)
    return message


def test_another_change_log_drops_every_local_answer() -> None:
    cache = LocalCache(max_staleness=5, clock=FakeClock())
    cache.apply(change("user_a", "pro", 7))
    cache.apply(identified_beat(10))
    assert cache.fresh("user_a") is not None
    assert cache.watch_request().log_id == "log-a"  # a resumed stream names its log
    cache.apply(identified_beat(3, log_id="log-b"))  # the database was replaced
    assert cache.fresh("user_a") is None and not cache.entries
    assert cache.log_id == "log-b" and cache.resume_version == 3
    assert cache.synced  # the stream itself is of the new log: trusted again


def test_another_catalog_drops_every_answer_until_plans_are_read_again() -> None:
    cache = LocalCache(max_staleness=5, clock=FakeClock())
    cache.plans_loaded(pb.ListPlansResponse(features=["x"], catalog_fingerprint="cat-1"))
    cache.apply(change("user_a", "pro", 7))
    cache.apply(identified_beat(10))
    assert cache.fresh("user_a") is not None
    generation = cache.generation
    cache.apply(identified_beat(11, fingerprint="cat-2"))
    assert cache.catalog_stale and not cache.synced and not cache.entries
    cache.put_from_rpc(snapshot("user_a", "pro", 7), generation)  # asked before: not cached
    assert not cache.entries
    cache.apply(identified_beat(12, fingerprint="cat-2"))
    assert not cache.synced  # still stale until ListPlans is read again
    cache.plans_loaded(pb.ListPlansResponse(features=["x", "y"], catalog_fingerprint="cat-2"))
    cache.apply(identified_beat(13, fingerprint="cat-2"))
    assert cache.synced and cache.features == {"x", "y"} and not cache.catalog_stale


def test_a_reset_forgets_the_log_so_the_next_one_is_not_a_change() -> None:
    cache = LocalCache(max_staleness=5, clock=FakeClock())
    cache.apply(identified_beat(10))
    cache.reset()
    assert cache.watch_request() == pb.WatchEntitlementsRequest()
    cache.apply(change("user_a", "pro", 4))
    cache.apply(identified_beat(5, log_id="log-b"))
    assert cache.fresh("user_a") is not None


@pytest.mark.parametrize("skew_s", [-120, -1, 0, 1, 120])
def test_valid_until_is_judged_on_the_servers_clock(skew_s: int) -> None:
    server_ms = 1_800_000_000_000
    wall = {"now": server_ms / 1000 + skew_s}  # this machine's clock, skew_s off
    cache = LocalCache(max_staleness=5, clock=FakeClock(), wall_clock=lambda: wall["now"])
    ends = pb.WatchEntitlementsResponse(
        subject="user_a",
        entitlements=pb.GetEntitlementsResponse(subject="user_a", plan="pro", version=7),
        version=7,
    )
    ends.entitlements.valid_until.FromMilliseconds(server_ms + 1_000)
    cache.apply(ends)
    cache.apply(identified_beat(10, server_ms=server_ms))
    assert cache.fresh("user_a") is not None  # 1 s before the end, on the server's clock
    wall["now"] += 0.999
    assert cache.fresh("user_a") is not None
    wall["now"] += 0.002  # the server's clock has passed valid_until
    assert cache.fresh("user_a") is None
