"""Consume under load (issue 20): one hot subject, and 10 000 distinct subjects.

h2load sends one fixed body, and every Consume needs its own idempotency key, so the load
generator here is a grpc.aio client in this process (a process apart from the service's):
CONCURRENCY calls in flight over 4 channels, each call a fresh key. Reported: throughput, p50 /
p99 latency, and exactness checked after the run (the usage the service reports equals the
allowed calls, each counted once).

Part of `make bench`; alone: `.venv/bin/python -m bench.run consume`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from bench.stack import SYNC_SECRET, database, service, wait_serving
from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc

CALLS = int(os.environ.get("BENCH_CONSUME_CALLS", "20000"))
CONCURRENCY = int(os.environ.get("BENCH_CONSUME_CONCURRENCY", "64"))
SUBJECTS = 10_000
METER = "aiInsightsPerMonth"
HOT = "user_bench_hot"


async def _load(target: str, subjects: list[str], calls: int) -> dict[str, Any]:
    channels = [aio.insecure_channel(target) for _ in range(4)]
    stubs = [usage_grpc.UsageServiceStub(c) for c in channels]
    latencies: list[float] = []
    allowed: dict[str, int] = {}
    next_call = 0

    async def worker() -> None:
        nonlocal next_call
        while next_call < calls:
            i = next_call
            next_call += 1
            who = subjects[i % len(subjects)]
            started = time.perf_counter()
            answer = await stubs[i % len(stubs)].Consume(
                usage_pb.ConsumeRequest(
                    subject=who, limit=METER, amount=1, idempotency_key=f"bench-{i}"
                ),
                timeout=30,
            )
            latencies.append(time.perf_counter() - started)
            if answer.allowed:
                allowed[who] = allowed.get(who, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    exact = True
    for who in set(subjects):
        got = await stubs[0].GetUsage(usage_pb.GetUsageRequest(subject=who), timeout=30)
        exact = exact and got.usage[0].used == allowed.get(who, 0)
    for channel in channels:
        await channel.close()
    cut = statistics.quantiles(latencies, n=100)
    return {
        "calls": calls,
        "per_second": round(calls / elapsed),
        "p50_ms": round(cut[49] * 1000, 2),
        "p99_ms": round(cut[98] * 1000, 2),
        "allowed": sum(allowed.values()),
        "exact": exact,
    }


def _unlimited_for(target: str, subject: str, sync_secret: str) -> None:
    """The hot subject gets an unlimited override, so every call takes the write path."""
    with grpc.insecure_channel(target) as channel:
        sync_grpc.BillingSyncServiceStub(channel).SetOverride(
            sync_pb.SetOverrideRequest(
                subject=subject, limit=METER, unlimited=True, reason="bench"
            ),
            metadata=(("authorization", f"Bearer {sync_secret}"),),
            timeout=10,
        )


def measure(target: str, sync_secret: str) -> dict[str, Any]:
    """Both loads against a serving service with a fresh database."""
    _unlimited_for(target, HOT, sync_secret)
    hot = asyncio.run(_load(target, [HOT], CALLS))
    many = asyncio.run(_load(target, [f"user_bench_{i}" for i in range(SUBJECTS)], CALLS))
    return {"hot_subject": hot, "distinct_subjects": many, "concurrency": CONCURRENCY}


def bench() -> dict[str, Any]:
    """Consume on a service of its own over a fresh database."""
    logs = Path(tempfile.mkdtemp(prefix="ent-bench-consume-"))
    with database() as dsn:
        manager, target = service(dsn, logs, "consume")
        with manager:
            wait_serving(target)
            return measure(target, SYNC_SECRET)


def describe(results: dict[str, Any]) -> str:
    lines = []
    for name in ("hot_subject", "distinct_subjects"):
        r = results[name]
        lines.append(
            f"Consume, {name.replace('_', ' ')}: {r['per_second']}/s, p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, {r['allowed']} allowed of {r['calls']}, exact: {r['exact']}"
        )
    return "\n".join(lines)
