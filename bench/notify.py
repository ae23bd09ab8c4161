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
BENCH_NOTIFY_INGEST, BENCH_NOTIFY_LATENCY, BENCH_NOTIFY_OUTAGE_SECONDS scale it down;
BENCH_NOTIFY_ROUNDS, default 5, the ingest rounds). The receiver runs at nice 19, standing in
for an app on other machines.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from grpc import aio

from bench.scale import NICE
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
# Every change is queued within this (a skipped one, seen once on 2026-12-08, hung the bench).
QUEUED_WITHIN_SECONDS = 300
ROUNDS = int(os.environ.get("BENCH_NOTIFY_ROUNDS", "5"))  # the ratio is their median
IN_PROCESS = os.environ.get("BENCH_NOTIFY_IN_PROCESS") == "1"
NOTIFY_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
AUTH = (("authorization", f"Bearer {SYNC_SECRET}"),)


class Receiver:
    """Talks to bench/notify_receiver.py, a process of its own."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._base = f"http://127.0.0.1:{self.port}"
        self._session = session

    async def status(self, code: int) -> None:
        async with self._session.post(f"{self._base}/status/{code}") as r:
            r.raise_for_status()

    async def arrival(self, subject: str) -> float | None:
        async with self._session.get(f"{self._base}/arrival/{subject}") as r:
            at = (await r.json())["at"] if r.status == 200 else None
            return None if at is None else float(at)

    async def count(self, prefix: str) -> dict[str, Any]:
        async with self._session.get(f"{self._base}/count/{prefix}") as r:
            found: dict[str, Any] = await r.json()
            return found

    async def wait_up(self) -> None:
        async with asyncio.timeout(30):
            while True:
                try:
                    await self.count("-")
                    return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)


async def _set(stub: Any, subject: str, value: int) -> None:
    await stub.SetOverride(
        sync_pb.SetOverrideRequest(subject=subject, limit="maxGoals", value=value, reason="bench"),
        metadata=AUTH,
        timeout=30,
    )


async def latency(target: str, receiver: Receiver) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    delays: list[float] = []
    async with aio.insecure_channel(target) as channel:
        stub = sync_grpc.BillingSyncServiceStub(channel)
        for i in range(LATENCY):
            subject = f"user_lat_{tag}_{i}"
            await _set(stub, subject, 1)
            committed = time.time()
            async with asyncio.timeout(30):
                while (at := await receiver.arrival(subject)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            delays.append(at - committed)
            await asyncio.sleep(0.02)
    cut = statistics.quantiles(delays, n=100)
    return {
        "changes": LATENCY,
        "p50_ms": round(cut[49] * 1000, 1),
        "p99_ms": round(cut[98] * 1000, 1),
    }


async def catch_up(target: str, dsn: str, receiver: Receiver) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    prefix = f"user_out_{tag}_"
    subjects = [f"{prefix}{i}" for i in range(CHANGES)]
    await receiver.status(503)
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
        try:
            async with asyncio.timeout(QUEUED_WITHIN_SECONDS):
                while await conn.fetchval(queued, f"{prefix}%") < CHANGES:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        except TimeoutError:  # a change the notifier skipped: say so, do not wait forever
            got = await conn.fetchval(queued, f"{prefix}%")
            raise SystemExit(
                f"notifications: {got} of {CHANGES} changes queued after "
                f"{QUEUED_WITHIN_SECONDS} s; the notifier missed the rest"
            ) from None
    finally:
        await conn.close()
    await asyncio.sleep(max(0.0, OUTAGE - (time.perf_counter() - outage)))
    down_for = time.perf_counter() - outage
    refused = (await receiver.count(prefix))["requests"]
    await receiver.status(200)
    back = time.time()
    async with asyncio.timeout(900):
        while (got := await receiver.count(prefix))["accepted"] < CHANGES:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return {
        "pending": CHANGES,
        "outage_seconds": round(down_for, 1),
        "refused_attempts_during_outage": refused,
        "first_after_seconds": round(got["first"] - back, 1),
        "caught_up_seconds": round(got["last"] - back, 1),
    }


@asynccontextmanager
async def _stack(
    dsn: str, logs: Path, port: int, gateway_port: int, notify: str | None
) -> AsyncIterator[str]:
    """The service and the gateway; with `notify`, the notifier as deployed by default here: a
    process of its own (`entitlements-service notify`) at nice 19, the smallest CPU share (it
    gives way to reads and ingest and catches up after); BENCH_NOTIFY_IN_PROCESS=1: inside the
    service instead."""
    env = {"ENTITLEMENTS_LISTEN": f"127.0.0.1:{port}"}
    notify_env: dict[str, str] = {}
    if notify is not None:
        notify_env = {
            "ENTITLEMENTS_NOTIFY_URL": notify,
            "ENTITLEMENTS_NOTIFY_SECRET": NOTIFY_SECRET,
        }
        if os.environ.get("BENCH_NOTIFY_CONCURRENCY"):
            notify_env["ENTITLEMENTS_NOTIFY_CONCURRENCY"] = os.environ["BENCH_NOTIFY_CONCURRENCY"]
    in_process = IN_PROCESS and notify is not None
    manager, _ = service(
        dsn,
        logs,
        "notify-on" if notify else "notify-off",
        env=env | (notify_env if in_process else {}),
    )
    target = env["ENTITLEMENTS_LISTEN"]  # a fixed port: the gateway points at it every round
    gateway_env = {
        "ENTITLEMENTS_TARGET": target,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
        "GATEWAY_LISTEN": f"127.0.0.1:{gateway_port}",
    }
    gateway = [str(BIN / "entitlements-gateway"), "--log-level", "WARNING"]
    with ExitStack() as stack:
        stack.enter_context(manager)
        stack.enter_context(process(gateway, gateway_env, "gateway", logs))
        wait_serving(target)
        if notify is not None and not in_process:
            notifier = [*NICE, str(BIN / "entitlements-service"), "notify"]
            notifier += ["--log-level", "WARNING"]
            stack.enter_context(
                process(notifier, {"DATABASE_URL": dsn, **notify_env}, "notifier", logs)
            )
        await asyncio.sleep(1.0)  # the gateway's port
        if notify is not None:
            await _first_scan(dsn)
        yield target


async def _first_scan(dsn: str) -> None:
    """Until the notifier's first scan has set its change-log position: it notifies the
    changes from then on, and a notifier at nice 19 on busy cores can take seconds to get
    there (a fixed wait of a second once let the first measured change go unnotified)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(120):
            while await conn.fetchval("SELECT position FROM notify_state") is None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _run(logs: Path, databases: list[str]) -> dict[str, Any]:
    port, gateway_port = free_port(), free_port()
    url = f"http://127.0.0.1:{gateway_port}/api/webhooks/clerk-billing"
    async with aiohttp.ClientSession() as session:
        receiver = Receiver(session)
        with process(
            # At nice 19: it stands in for the app that receives, on other machines (as the
            # watchers of bench/scale.py do), so its CPU is not taken from what is measured.
            [*NICE, sys.executable, "-m", "bench.notify_receiver", str(receiver.port)],
            {},
            "receiver",
            logs,
        ):
            await receiver.wait_up()
            rates: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(ROUNDS):
                for mode in ("off", "on"):
                    notify = receiver.url if mode == "on" else None
                    # A database of its own: the notifier has only this round's changes to send.
                    async with _stack(databases.pop(), logs, port, gateway_port, notify):
                        result = await bench_ingest(url, INGEST, 32)
                        rates[mode].append(result["per_second"])
            dsn = databases.pop()
            async with _stack(dsn, logs, port, gateway_port, receiver.url) as target:
                lat = await latency(target, receiver)
                out = await catch_up(target, dsn, receiver)
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    return {
        "notifier": "in the service" if IN_PROCESS else "a process of its own at nice 19",
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
        f"notifications (the notifier {r['notifier']}): commit→receiver "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms "
        f"({lat['changes']} changes)\n"
        f"ingest with notifications on vs off: {ing['on_vs_off']}x "
        f"(off {ing['off_per_second']}/s, on {ing['on_per_second']}/s)\n"
        f"catch-up: {cu['pending']} pending after a {cu['outage_seconds']} s outage: first "
        f"{cu['first_after_seconds']} s after the receiver came back, all in "
        f"{cu['caught_up_seconds']} s"
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
