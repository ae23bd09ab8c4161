"""Signed webhooks for the benchmarks: the signing secret, one activation, ingest and
freshness through the gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from datetime import UTC, datetime

import aiohttp
import grpc
from svix.webhooks import Webhook

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc

SIGNING_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed(body: bytes, msg_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(SIGNING_SECRET).sign(msg_id, now, body.decode()),
        "content-type": "application/json",
    }


def activation(subject: str) -> bytes:
    now = int(time.time() * 1000)
    return json.dumps(
        {
            "type": "subscriptionItem.active",
            "timestamp": now,
            "object": "event",
            "data": {
                "id": f"subi_{subject}",
                "object": "commerce_subscription_item",
                "status": "active",
                "plan_period": "month",
                "period_start": now,
                "period_end": now + 30 * 86_400_000,
                "plan_id": "cplan_pro",
                "plan": {"id": "cplan_pro", "slug": "pro", "is_default": False},
                "payer": {"id": "cpayer_x", "user_id": subject},
                "updated_at": now,
            },
        }
    ).encode()


async def bench_ingest(url: str, count: int, concurrency: int) -> dict[str, float]:
    tag = secrets.token_hex(3)
    bodies = [(f"msg_ingest_{tag}_{i}", activation(f"user_ingest_{tag}_{i}")) for i in range(count)]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            msg_id, body = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, data=body, headers=signed(body, msg_id)) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "deliveries": count,
        "failures": failures,
        "per_second": count / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


async def bench_freshness(url: str, target_b: str, rounds: int) -> dict[str, float]:
    tag = secrets.token_hex(3)
    delays: list[float] = []
    async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(target_b) as channel:
        stub = pb_grpc.EntitlementServiceStub(channel)
        for i in range(rounds):
            subject = f"user_fresh_{tag}_{i}"
            request = pb.CanUseRequest(subject=subject, feature="dataExport")
            assert not (await stub.CanUse(request)).allowed  # B caches "free"
            body = activation(subject)
            async with session.post(
                url, data=body, headers=signed(body, f"msg_fresh_{tag}_{i}")
            ) as r:
                await r.read()
                assert r.status == 200
            acked = time.perf_counter()
            while not (await stub.CanUse(request)).allowed:
                if time.perf_counter() - acked > 5:
                    raise RuntimeError("replica B never saw the change")
            delays.append(time.perf_counter() - acked)
    delays.sort()
    return {
        "rounds": rounds,
        "p50_ms": delays[len(delays) // 2] * 1000,
        "p99_ms": delays[int(len(delays) * 0.99)] * 1000,
        "max_ms": delays[-1] * 1000,
    }


async def bench_ingest_one(url: str, subject: str) -> None:
    body = activation(subject)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers=signed(body, "msg_bench_setup_" + secrets.token_hex(4))
        ) as r,
    ):
        assert r.status == 200, await r.text()
