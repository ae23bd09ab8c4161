"""Auth on the write side, bad requests, and the database going away (UNAVAILABLE, health)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from service.config import load_catalog
from tests.conftest import Harness, start_harness
from tests.support import SYNC_SECRET, Clock, body, event, new_event_id, now_ms
from tests.support.rpc import apply, plan_of

pytestmark = pytest.mark.integration


def apply_request(subject: str) -> sync_pb.ApplyBillingEventRequest:
    payload = event("item_active_pro_month", at_ms=now_ms(), subject=subject)
    return sync_pb.ApplyBillingEventRequest(
        event_id=new_event_id(), type="subscriptionItem.active", payload=body(payload)
    )


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-secret-of-sufficient-length-xxxxxx"),),
        (("authorization", SYNC_SECRET),),  # no "Bearer " scheme
        (("authorization", f"Bearer {SYNC_SECRET}x"),),
        (("authorization", "Bearer "),),
    ],
)
async def test_write_side_refuses_missing_or_wrong_token(
    harness: Harness, metadata: tuple[tuple[str, str], ...]
) -> None:
    who = "user_auth_" + new_event_id()[4:12]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.sync.ApplyBillingEvent(apply_request(who), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err2:
        await harness.sync.GetSubjectHistory(
            sync_pb.GetSubjectHistoryRequest(subject=who), metadata=metadata
        )
    assert err2.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await plan_of(harness, who) == "free"  # nothing changed
    async with harness.store._pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_reads_need_no_token(harness: Harness) -> None:
    r = await harness.entitlements.CanUse(pb.CanUseRequest(subject="user_x", feature="aiInsights"))
    assert r.allowed


async def test_service_without_secret_answers_config_error(database_url: str, clock: Clock) -> None:
    async for h in start_harness(database_url, clock, secret=None):
        for metadata in ((), (("authorization", f"Bearer {SYNC_SECRET}"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.sync.ApplyBillingEvent(apply_request("user_nosecret"), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert err.value.details() == "Server config error"
        # The read side is unaffected.
        assert await plan_of(h, "user_nosecret") == "free"


async def test_sync_secret_rotation_accepts_each_listed_secret(
    database_url: str, clock: Clock
) -> None:
    new = "n" * 40
    async for h in start_harness(database_url, clock, secret=f"{new}, {SYNC_SECRET}"):
        for secret in (new, SYNC_SECRET):
            r = await h.sync.ApplyBillingEvent(
                apply_request("user_rotation_" + new_event_id()[4:12]),
                metadata=(("authorization", f"Bearer {secret}"),),
            )
            assert r.outcome == sync_pb.APPLIED
        for wrong in ("o" * 40, f"{new} {SYNC_SECRET}", f"{new}, {SYNC_SECRET}"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.sync.ApplyBillingEvent(
                    apply_request("user_rotation_x"),
                    metadata=(("authorization", f"Bearer {wrong}"),),
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("", "must not be empty"),
        ("u" * 256, "at most 255 bytes"),
        ("é" * 128, "at most 255 bytes"),
        ("user_\x00x", "printable"),
        ("user_x\n", "printable"),
    ],
)
async def test_bad_subject_is_invalid_argument(
    harness: Harness, subject: str, problem: str
) -> None:
    calls: list[Awaitable[Any]] = [
        harness.entitlements.CanUse(pb.CanUseRequest(subject=subject, feature="aiInsights")),
        harness.entitlements.GetLimits(pb.GetLimitsRequest(subject=subject)),
        harness.entitlements.GetEntitlements(pb.GetEntitlementsRequest(subject=subject)),
        harness.entitlements.CheckLimit(pb.CheckLimitRequest(subject=subject, limit="maxGoals")),
        harness.entitlements.BatchCanUse(
            pb.BatchCanUseRequest(checks=[pb.CanUseRequest(subject=subject, feature="aiInsights")])
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert problem in (err.value.details() or "")
        assert "Traceback" not in (err.value.details() or "")


async def test_subject_of_255_bytes_is_accepted(harness: Harness) -> None:
    r = await harness.entitlements.GetLimits(pb.GetLimitsRequest(subject="u" * 255))
    assert r.plan == "free"


async def test_unknown_feature_and_limit_are_named(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.entitlements.CanUse(pb.CanUseRequest(subject="user_1", feature="teleport"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "teleport" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.entitlements.CheckLimit(
            pb.CheckLimitRequest(subject="user_1", limit="maxCats")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maxCats" in (err.value.details() or "")


async def test_batch_can_use_keeps_order_and_caps_size(harness: Harness) -> None:
    pro = "user_batch_" + new_event_id()[4:12]
    await apply(harness, event("item_active_pro_month", at_ms=now_ms(), subject=pro))
    checks = [
        pb.CanUseRequest(subject=pro, feature="dataExport"),
        pb.CanUseRequest(subject="user_free_b", feature="dataExport"),
        pb.CanUseRequest(subject=pro, feature="aiInsights"),
        pb.CanUseRequest(subject="user_free_b", feature="aiInsights"),
    ]
    r = await harness.entitlements.BatchCanUse(pb.BatchCanUseRequest(checks=checks))
    assert [x.allowed for x in r.results] == [True, False, True, True]
    assert [x.plan for x in r.results] == ["pro", "free", "pro", "free"]
    full = [pb.CanUseRequest(subject=f"user_{i}", feature="aiInsights") for i in range(1000)]
    assert (
        len((await harness.entitlements.BatchCanUse(pb.BatchCanUseRequest(checks=full))).results)
        == 1000
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.entitlements.BatchCanUse(pb.BatchCanUseRequest(checks=[*full, full[0]]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000" in (err.value.details() or "")
    bad = [*checks[:2], pb.CanUseRequest(subject="user_1", feature="nope")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.entitlements.BatchCanUse(pb.BatchCanUseRequest(checks=bad))
    assert "checks[2]" in (err.value.details() or "")


async def test_check_limit(harness: Harness) -> None:
    r = await harness.entitlements.CheckLimit(
        pb.CheckLimitRequest(subject="user_cl", limit="maxHabits", current_usage=9, requested=1)
    )
    assert (r.allowed, r.limit, r.remaining, r.unlimited, r.plan) == (True, 10, 1, False, "free")
    r = await harness.entitlements.CheckLimit(
        pb.CheckLimitRequest(subject="user_cl", limit="maxHabits", current_usage=10)
    )
    assert (r.allowed, r.remaining) == (False, 0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.entitlements.CheckLimit(
            pb.CheckLimitRequest(subject="user_cl", limit="maxHabits", current_usage=-1)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_plans(harness: Harness) -> None:
    r = await harness.entitlements.ListPlans(pb.ListPlansRequest())
    assert [p.name for p in r.plans] == ["free", "pro", "lifetime"]
    assert r.default_plan == "free" and r.plans[0].is_default
    assert list(r.plans[1].clerk_slugs) == ["pro", "pro_monthly", "pro_yearly"]
    assert r.plans[2].lifetime and r.plans[1].limits["maxHabits"].unlimited


async def test_apply_rejects_bad_event_id(harness: Harness) -> None:
    for event_id in ("", "x" * 256, "msg\n1"):
        req = apply_request("user_badid")
        req.event_id = event_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await harness.sync.ApplyBillingEvent(req, metadata=harness.auth)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that can be cut and restored: a real outage."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def proxied(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    from urllib.parse import urlsplit

    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.port or 5432)
    await proxy.start()
    yield proxy, database_url.replace(f":{parts.port}/", f":{proxy.port}/")
    with contextlib.suppress(Exception):
        await proxy.cut()


async def _health(h: Harness, service: str = "") -> int:
    stub: Any = health_pb2_grpc.HealthStub(h.channel)  # typeshed stub lacks the methods
    r = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(r.status)


async def _wait_health(h: Harness, status: int) -> None:
    for _ in range(100):
        if await _health(h) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {status}")


async def test_database_down_is_unavailable_and_not_serving(
    database_url: str, clock: Clock
) -> None:
    if "127.0.0.1" not in database_url:
        pytest.skip("the outage proxy needs a TCP database")
    assert load_catalog(None)
    async with proxied(database_url) as (proxy, dsn):
        async for h in start_harness(dsn, clock):
            await _wait_health(h, health_pb2.HealthCheckResponse.SERVING)
            for name in (
                "entitlements.v1.EntitlementService",
                "entitlements.v1.BillingSyncService",
            ):
                assert await _health(h, name) == health_pb2.HealthCheckResponse.SERVING
            await proxy.cut()
            await _wait_health(h, health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.entitlements.CanUse(
                    pb.CanUseRequest(subject="user_1", feature="aiInsights")
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Traceback" not in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.sync.ApplyBillingEvent(apply_request("user_down"), metadata=h.auth)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await proxy.start()  # same port: the database is back
            await _wait_health(h, health_pb2.HealthCheckResponse.SERVING)
            r = await h.sync.ApplyBillingEvent(apply_request("user_down"), metadata=h.auth)
            assert r.outcome == sync_pb.APPLIED
            assert await plan_of(h, "user_down") == "pro"
