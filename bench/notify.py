"""Outbound change notifications (issue 22): latency from commit to receiver, ingest with
notifications on vs off, and catch-up after a receiver outage.

* latency: SetOverride calls one after another (paced), each timed from its answer (committed)
  to the receiver's arrival of that subject's notification;
* ingest: signed webhooks through the gateway, alternating rounds with the service started
  without and with ENTITLEMENTS_NOTIFY_URL (the receiver answers at once), median ratio;
* catch-up: the receiver answers 503 while CHANGES subjects change and for at least OUTAGE
  seconds (long enough for the retries to reach the 30 s backoff cap, where any longer outage
  leaves them too), then answers 200; timed from then until it has every subject's
  notification.

Part of `make bench`; alone: `.venv/bin/python -m bench.run notify` (BENCH_NOTIFY_CHANGES,
BENCH_NOTIFY_INGEST, BENCH_NOTIFY_LATENCY, BENCH_NOTIFY_OUTAGE_SECONDS scale it down).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from grpc import aio

from bench.stack import BIN, SYNC_SECRET, database, free_port, process, service, wait_serving
from bench.webhooks import SIGNING_SECRET, bench_ingest
from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc

CHANGES = int(os.environ.get("BENCH_NOTIFY_CHANGES", "10000"))
INGEST = int(os.environ.get("BENCH_NOTIFY_INGEST", "2000"))
LATENCY = int(os.environ.get("BENCH_NOTIFY_LATENCY", "300"))
# The receiver stays down at least this long: past the time retries take to reach the 30 s
# backoff cap, so what follows is what follows any longer outage (a 10-minute one included).
OUTAGE = float(os.environ.get("BENCH_NOTIFY_OUTAGE_SECONDS", "90"))
ROUNDS = 3
NOTIFY_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
AUTH = (("authorization", f"Bearer {SYNC_SECRET}"),)


class Receiver:
    """Arrival time of each (subject, version) answered 2xx; `status` is what it answers."""

    def __init__(self) -> None:
        self.status = 200
        self.arrived: dict[str, float] = {}  # subject -> first accepted arrival
        self.requests = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        data = (await request.json())["data"]
        self.requests += 1
        if self.status == 200:
            self.arrived.setdefault(data["subject"], time.perf_counter())
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _set(stub: Any, subject: str, value: int) -> None:
    await stub.SetOverride(
        sync_pb.SetOverrideRequest(subject=subject, limit="maxGoals", value=value, reason="bench"),
        metadata=AUTH,
        timeout=30,
    )


async def _wait(condition: Any, seconds: float) -> None:
    """Poll `condition` (the receiver runs in this loop) for up to `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - a plain check, nothing to wait on
            await asyncio.sleep(0.01)


async def latency(target: str, receiver: Receiver) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    delays: list[float] = []
    async with aio.insecure_channel(target) as channel:
        stub = sync_grpc.BillingSyncServiceStub(channel)
        for i in range(LATENCY):
            subject = f"user_lat_{tag}_{i}"
            await _set(stub, subject, 1)
            committed = time.perf_counter()
            await _wait(lambda s=subject: s in receiver.arrived, 30)
            delays.append(receiver.arrived[subject] - committed)
            await asyncio.sleep(0.02)
    cut = statistics.quantiles(delays, n=100)
    return {
        "changes": LATENCY,
        "p50_ms": round(cut[49] * 1000, 1),
        "p99_ms": round(cut[98] * 1000, 1),
    }


async def catch_up(target: str, dsn: str, receiver: Receiver) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    subjects = [f"user_out_{tag}_{i}" for i in range(CHANGES)]
    receiver.status = 503
    outage = time.perf_counter()
    async with aio.insecure_channel(target) as channel:
        stub = sync_grpc.BillingSyncServiceStub(channel)
        queue = list(reversed(subjects))

        async def worker() -> None:
            while queue:
                await _set(stub, queue.pop(), 2)

        await asyncio.gather(*(worker() for _ in range(32)))
    conn = await asyncpg.connect(dsn)
    try:
        queued = "SELECT count(*) FROM notify_deliveries WHERE subject LIKE $1"
        while await conn.fetchval(queued, f"user_out_{tag}_%") < CHANGES:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    await asyncio.sleep(max(0.0, OUTAGE - (time.perf_counter() - outage)))
    down_for = time.perf_counter() - outage
    failed_attempts = receiver.requests
    receiver.status = 200
    back = time.perf_counter()
    await _wait(lambda: all(s in receiver.arrived for s in subjects), 900)
    took = max(receiver.arrived[s] for s in subjects) - back
    first = min(receiver.arrived[s] for s in subjects) - back
    return {
        "pending": CHANGES,
        "outage_seconds": round(down_for, 1),
        "refused_attempts_during_outage": failed_attempts,
        "first_after_seconds": round(first, 1),
        "caught_up_seconds": round(took, 1),
        "per_second_after_first": round(CHANGES / max(took - first, 1e-9)),
    }


@contextmanager
def _stack(dsn: str, logs: Path, port: int, gateway_port: int, notify: str | None) -> Iterator[str]:
    env = {"ENTITLEMENTS_LISTEN": f"127.0.0.1:{port}"}
    if notify is not None:
        env |= {"ENTITLEMENTS_NOTIFY_URL": notify, "ENTITLEMENTS_NOTIFY_SECRET": NOTIFY_SECRET}
        if os.environ.get("BENCH_NOTIFY_CONCURRENCY"):
            env["ENTITLEMENTS_NOTIFY_CONCURRENCY"] = os.environ["BENCH_NOTIFY_CONCURRENCY"]
    manager, _ = service(dsn, logs, "notify-on" if notify else "notify-off", env=env)
    target = env["ENTITLEMENTS_LISTEN"]  # a fixed port: the gateway points at it every round
    gateway_env = {
        "ENTITLEMENTS_TARGET": target,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
        "GATEWAY_LISTEN": f"127.0.0.1:{gateway_port}",
    }
    gateway = [str(BIN / "entitlements-gateway"), "--log-level", "WARNING"]
    with manager, process(gateway, gateway_env, "gateway", logs):
        wait_serving(target)
        time.sleep(1.0)  # the gateway's port and the notifier's first scan
        yield target


async def _run(logs: Path, databases: list[str]) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    port, gateway_port = free_port(), free_port()
    url = f"http://127.0.0.1:{gateway_port}/api/webhooks/clerk-billing"
    try:
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(ROUNDS):
            for mode in ("off", "on"):
                notify = receiver.url if mode == "on" else None
                # A database of its own: the notifier has only this round's changes to send.
                with _stack(databases.pop(), logs, port, gateway_port, notify):
                    result = await bench_ingest(url, INGEST, 32)
                    rates[mode].append(result["per_second"])
        dsn = databases.pop()
        with _stack(dsn, logs, port, gateway_port, receiver.url) as target:
            lat = await latency(target, receiver)
            out = await catch_up(target, dsn, receiver)
    finally:
        await receiver.stop()
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    return {
        "latency": lat,
        "ingest": {
            "webhooks_per_round": INGEST,
            "off_per_second": [round(r) for r in rates["off"]],
            "on_per_second": [round(r) for r in rates["on"]],
            "on_vs_off": round(statistics.median(ratios), 3),
        },
        "catch_up": out,
    }


def bench() -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="ent-bench-notify-"))
    with ExitStack() as stack:
        databases = [stack.enter_context(database()) for _ in range(2 * ROUNDS + 1)]
        return asyncio.run(_run(logs, databases))


def describe(r: dict[str, Any]) -> str:
    lat, ing, cu = r["latency"], r["ingest"], r["catch_up"]
    return (
        f"notifications: commit→receiver p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms "
        f"({lat['changes']} changes)\n"
        f"ingest with notifications on vs off: {ing['on_vs_off']}x "
        f"(off {ing['off_per_second']}/s, on {ing['on_per_second']}/s)\n"
        f"catch-up: {cu['pending']} pending after a {cu['outage_seconds']} s outage: first "
        f"{cu['first_after_seconds']} s after the receiver came back, all in "
        f"{cu['caught_up_seconds']} s ({cu['per_second_after_first']}/s)"
    )


def targets(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "notify_latency_p99_ms": {"value": r["latency"]["p99_ms"], "target": "<= 1000"},
        "notify_ingest_on_vs_off": {"value": r["ingest"]["on_vs_off"], "target": ">= 0.9"},
        "notify_catch_up_10k_seconds": {
            "value": r["catch_up"]["caught_up_seconds"],
            "target": "<= 60",
        },
    }
