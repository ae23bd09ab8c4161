"""UsageService against real gRPC servers and PostgreSQL (SPEC §10.1): atomic consumption,
idempotency, reservations, periods that follow Clerk's billing period, CheckLimit and
GetEntitlements showing the stored usage, and exactness across two replicas."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from tests.conftest import Harness, rpc_code, start_harness
from tests.support import Clock, event, now_ms
from tests.support.rpc import apply, sql_rows, subject

pytestmark = pytest.mark.integration

METER = "aiInsightsPerMonth"
DAY = 86_400_000


def key() -> str:
    return "k_" + secrets.token_hex(8)


@pytest.fixture
def usage(harness: Harness) -> usage_grpc.UsageServiceAsyncStub:
    return usage_grpc.UsageServiceStub(harness.channel)


async def consume(
    stub: usage_grpc.UsageServiceAsyncStub, who: str, amount: int = 1, k: str | None = None
) -> usage_pb.ConsumeResponse:
    response: usage_pb.ConsumeResponse = await stub.Consume(
        usage_pb.ConsumeRequest(subject=who, limit=METER, amount=amount, idempotency_key=k or key())
    )
    return response


async def test_consume_is_allowed_until_the_free_limit(
    usage: usage_grpc.UsageServiceAsyncStub,
) -> None:
    who = subject("free")
    first = await consume(usage, who, 15)
    assert (first.allowed, first.used, first.remaining, first.limit_value) == (True, 15, 5, 20)
    assert first.HasField("resets_at")
    refused = await consume(usage, who, 6)
    assert (refused.allowed, refused.used, refused.remaining) == (False, 15, 5)
    last = await consume(usage, who, 5)
    assert (last.allowed, last.used, last.remaining) == (True, 20, 0)


async def test_a_retry_with_the_same_key_is_counted_once(
    usage: usage_grpc.UsageServiceAsyncStub,
) -> None:
    who, k = subject("retry"), key()
    first = await consume(usage, who, 3, k)
    again = await consume(usage, who, 3, k)
    assert not first.duplicate and again.duplicate
    assert (again.allowed, again.used) == (True, 3)
    assert (await consume(usage, who, 1)).used == 4


@pytest.mark.parametrize(
    ("limit", "amount", "k"),
    [
        ("maxHabits", 1, "k"),  # not metered
        ("nope", 1, "k"),
        (METER, 0, "k"),
        (METER, -1, "k"),
        (METER, 1, ""),
    ],
)
async def test_bad_input_is_invalid_argument_and_records_nothing(
    usage: usage_grpc.UsageServiceAsyncStub, limit: str, amount: int, k: str
) -> None:
    who = subject("bad")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await usage.Consume(
            usage_pb.ConsumeRequest(subject=who, limit=limit, amount=amount, idempotency_key=k)
        )
    assert rpc_code(err.value) is grpc.StatusCode.INVALID_ARGUMENT
    got = await usage.GetUsage(usage_pb.GetUsageRequest(subject=who))
    assert [(u.limit, u.used) for u in got.usage] == [(METER, 0)]


async def test_reservations_count_until_committed_released_or_expired(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub, clock: Clock
) -> None:
    who, k = subject("reserve"), key()
    held = await usage.Reserve(
        usage_pb.ReserveRequest(subject=who, limit=METER, amount=12, idempotency_key=k)
    )
    assert held.allowed and held.reservation_id and held.remaining == 8
    retried = await usage.Reserve(
        usage_pb.ReserveRequest(subject=who, limit=METER, amount=12, idempotency_key=k)
    )
    assert retried.duplicate and not held.duplicate
    assert (retried.reservation_id, retried.expires_at) == (held.reservation_id, held.expires_at)
    assert held.HasField("expires_at")
    assert not (await consume(usage, who, 9)).allowed  # 12 held + 9 > 20
    committed = await usage.CommitReservation(
        usage_pb.CommitReservationRequest(reservation_id=held.reservation_id, amount=7)
    )
    assert (committed.used, committed.remaining) == (7, 13)
    again = await usage.CommitReservation(
        usage_pb.CommitReservationRequest(reservation_id=held.reservation_id, amount=7)
    )
    assert again.used == 7  # finishing twice counts once
    second = await usage.Reserve(
        usage_pb.ReserveRequest(subject=who, limit=METER, amount=13, idempotency_key=key())
    )
    assert second.allowed and second.remaining == 0
    released = await usage.ReleaseReservation(
        usage_pb.ReleaseReservationRequest(reservation_id=second.reservation_id)
    )
    assert (released.used, released.remaining) == (7, 13)
    third = await usage.Reserve(
        usage_pb.ReserveRequest(
            subject=who, limit=METER, amount=13, ttl_seconds=60, idempotency_key=key()
        )
    )
    assert third.allowed
    assert not (await consume(usage, who, 1)).allowed
    clock.freeze(now_ms() + 61_000)  # the hold expires with no call
    got = await usage.GetUsage(usage_pb.GetUsageRequest(subject=who))
    assert (got.usage[0].used, got.usage[0].reserved) == (7, 0)
    assert (await consume(usage, who, 13)).allowed


async def test_report_usage_may_pass_the_limit(usage: usage_grpc.UsageServiceAsyncStub) -> None:
    who = subject("report")
    over = await usage.ReportUsage(
        usage_pb.ReportUsageRequest(subject=who, limit=METER, delta=25, idempotency_key=key())
    )
    assert (over.used, over.remaining) == (25, 0)
    reset = await usage.ReportUsage(
        usage_pb.ReportUsageRequest(subject=who, limit=METER, set=4, idempotency_key=key())
    )
    assert (reset.used, reset.remaining) == (4, 16)


async def test_the_period_follows_the_paid_item_and_a_plan_change_keeps_the_count(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub
) -> None:
    who = subject("period")
    assert (await consume(usage, who, 18)).used == 18  # free, this calendar month
    start = now_ms() - DAY
    pro = event("item_active_pro_month", at_ms=start, subject=who)
    pro["data"]["period_start"], pro["data"]["period_end"] = start, start + 30 * DAY
    await apply(harness, pro)
    upgraded = await consume(usage, who, 100)  # the new period keeps the 18
    assert (upgraded.allowed, upgraded.used, upgraded.limit_value) == (True, 118, 500)
    assert upgraded.resets_at.ToMilliseconds() == start + 30 * DAY
    ent = await harness.entitlements.GetEntitlements(pb.GetEntitlementsRequest(subject=who))
    (metered,) = ent.metered
    assert (metered.limit, metered.used, metered.remaining) == (METER, 118, 382)
    assert metered.period_start.ToMilliseconds() == start
    assert ent.valid_until.ToMilliseconds() == start + 30 * DAY  # a reset is a change by time
    check = await harness.entitlements.CheckLimit(
        pb.CheckLimitRequest(subject=who, limit=METER, requested=382)
    )
    assert check.allowed and check.remaining == 382
    check = await harness.entitlements.CheckLimit(
        pb.CheckLimitRequest(subject=who, limit=METER, requested=383)
    )
    assert not check.allowed


async def test_a_renewal_starts_the_next_period_from_zero(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub, clock: Clock
) -> None:
    who = subject("renewal")
    start = now_ms() - 29 * DAY
    pro = event("item_active_pro_month", at_ms=start, subject=who)
    pro["data"]["period_start"], pro["data"]["period_end"] = start, start + 30 * DAY
    await apply(harness, pro)
    assert (await consume(usage, who, 499)).used == 499
    clock.freeze(start + 30 * DAY + 1000)  # past period_end: the next period, whoever calls
    renewed = await consume(usage, who, 2)
    assert (renewed.allowed, renewed.used) == (True, 2)


@pytest.fixture
async def two_replicas(database_url: str, clock: Clock) -> AsyncIterator[tuple[Harness, Harness]]:
    async for a in start_harness(database_url, clock):
        async for b in start_harness(database_url, clock):
            yield a, b


async def test_concurrent_consumers_on_two_replicas_never_pass_the_limit(
    two_replicas: tuple[Harness, Harness],
) -> None:
    who = subject("race")
    stubs: list[usage_grpc.UsageServiceAsyncStub] = [
        usage_grpc.UsageServiceStub(h.channel) for h in two_replicas
    ]
    channels = [aio.insecure_channel(h.target) for h in two_replicas for _ in range(2)]
    stubs += [usage_grpc.UsageServiceStub(c) for c in channels]
    keys = [key() for _ in range(60)]
    try:
        calls = [consume(stubs[i % len(stubs)], who, 1, k) for i, k in enumerate(keys)]
        retries = [consume(stubs[(i + 1) % len(stubs)], who, 1, k) for i, k in enumerate(keys)]
        answers = await asyncio.gather(*calls, *retries)
    finally:
        for channel in channels:
            await channel.close()
    firsts = {}
    for k, answer in zip(keys * 2, answers, strict=True):
        if not answer.duplicate:
            assert k not in firsts  # each key counted once
            firsts[k] = answer
    assert set(firsts) == set(keys)
    allowed = sum(1 for k in keys if firsts[k].allowed)
    assert allowed == min(20, len(keys))  # exactly the limit: never past it, none lost
    got = await stubs[0].GetUsage(usage_pb.GetUsageRequest(subject=who))
    assert got.usage[0].used == allowed


async def test_verify_replays_the_recorded_calls_to_every_counter(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub, database_url: str
) -> None:
    who = subject("verify")
    await consume(usage, who, 5)
    await consume(usage, who, 30)  # refused: recorded, counts nothing
    await usage.ReportUsage(
        usage_pb.ReportUsageRequest(subject=who, limit=METER, delta=2, idempotency_key=key())
    )
    held = await usage.Reserve(
        usage_pb.ReserveRequest(subject=who, limit=METER, amount=4, idempotency_key=key())
    )
    await usage.CommitReservation(
        usage_pb.CommitReservationRequest(reservation_id=held.reservation_id, amount=3)
    )
    await usage.ReportUsage(
        usage_pb.ReportUsageRequest(subject=who, limit=METER, set=9, idempotency_key=key())
    )
    await consume(usage, who, 1)

    async def differences() -> list[str]:
        stream = harness.sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=harness.auth)
        last = [m async for m in stream][-1]
        return [d.description for d in last.differences if d.subject == who]

    assert await differences() == []
    await sql_rows(
        database_url, "UPDATE usage_counters SET used = used + 1 WHERE subject = $1", who
    )
    assert await differences() == [f"usage of {METER}: live 11, rebuilt 10"]


async def test_old_records_roll_up_and_verify_still_agrees(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub, database_url: str
) -> None:
    who = subject("rollup")
    for amount in (3, 4, 5):
        await consume(usage, who, amount)
    await sql_rows(
        database_url,
        "UPDATE usage_records SET recorded_at = now() - interval '100 days' WHERE subject = $1",
        who,
    )
    await consume(usage, who, 1)  # a recent one stays as it is
    assert await harness.store.roll_up_usage(90 * 86_400) >= 3
    rows = await sql_rows(
        database_url,
        "SELECT kind, amount FROM usage_records WHERE subject = $1 ORDER BY seq",
        who,
    )
    assert [(r["kind"], r["amount"]) for r in rows] == [("set", 12), ("consume", 1)]
    got = await usage.GetUsage(usage_pb.GetUsageRequest(subject=who))
    assert got.usage[0].used == 13
    stream = harness.sync.VerifyState(sync_pb.VerifyStateRequest(), metadata=harness.auth)
    last = [m async for m in stream][-1]
    assert [d for d in last.differences if d.subject == who] == []
    assert await harness.store.roll_up_usage(90 * 86_400) == 0  # nothing more to do


async def test_the_roll_up_walks_every_counter_a_batch_at_a_time(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub, database_url: str
) -> None:
    who = [subject(f"rollup{i}") for i in range(5)]
    for w in who:
        await consume(usage, w, 2)
        await consume(usage, w, 3)
    await sql_rows(
        database_url,
        "UPDATE usage_records SET recorded_at = now() - interval '100 days'"
        " WHERE subject = ANY($1::text[])",
        who,
    )
    assert await harness.store.roll_up_usage(90 * 86_400, batch=2) >= 10  # three batches or more
    rows = await sql_rows(
        database_url,
        "SELECT subject, kind, amount FROM usage_records WHERE subject = ANY($1::text[])",
        who,
    )
    assert sorted((r["subject"], r["kind"], r["amount"]) for r in rows) == sorted(
        (w, "set", 5) for w in who
    )


async def test_a_cancel_keeps_the_period_until_its_end_then_free_counts_by_month(
    harness: Harness, usage: usage_grpc.UsageServiceAsyncStub, clock: Clock
) -> None:
    """Clerk's cancel-to-period-end: pro and its period (and count) hold until period_end;
    then the subject is free, counted by calendar month, from zero."""
    who = subject("cancel")
    start = now_ms() - 10 * DAY
    pro = event("item_active_pro_month", at_ms=start, subject=who)
    pro["data"]["period_start"], pro["data"]["period_end"] = start, start + 30 * DAY
    await apply(harness, pro)
    assert (await consume(usage, who, 100)).used == 100
    canceled = event("item_canceled_pro", at_ms=now_ms(), subject=who)
    canceled["data"].update(id=pro["data"]["id"], period_start=start, period_end=start + 30 * DAY)
    await apply(harness, canceled)
    still = await consume(usage, who, 1)
    assert (still.used, still.limit_value) == (101, 500)
    assert still.resets_at.ToMilliseconds() == start + 30 * DAY
    clock.freeze(start + 30 * DAY + 1000)  # the paid period is over: free, from zero
    after = await consume(usage, who, 1)
    assert (after.allowed, after.used, after.limit_value) == (True, 1, 20)


async def test_a_free_subject_starts_again_when_the_utc_month_turns(
    usage: usage_grpc.UsageServiceAsyncStub, clock: Clock
) -> None:
    from datetime import UTC, datetime

    who = subject("month")
    clock.freeze(int(datetime(2031, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000))
    january = await consume(usage, who, 20)
    assert january.allowed and january.remaining == 0
    assert january.resets_at.ToDatetime(tzinfo=UTC) == datetime(2031, 2, 1, tzinfo=UTC)
    assert not (await consume(usage, who, 1)).allowed
    clock.freeze(int(datetime(2031, 2, 1, 0, 0, 0, tzinfo=UTC).timestamp() * 1000))
    february = await consume(usage, who, 1)
    assert (february.allowed, february.used) == (True, 1)
    assert february.resets_at.ToDatetime(tzinfo=UTC) == datetime(2031, 3, 1, tzinfo=UTC)
