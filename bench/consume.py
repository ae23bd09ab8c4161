"""Consume under load (issue 20): one hot subject, and 10 000 distinct subjects, each closed-loop
(64 calls in flight, the CanUse shape: the throughput) and open-loop at BENCH_CONSUME_RATE
calls/s (default 2 000, the issue's target: the latency at that rate).

h2load sends one fixed body, and every Consume needs its own idempotency key, so the load
generator is bench/consume_load.c: h2load's engine (nghttp2, in C) in h2load's shape
(4 connections x 16 streams), a fresh key per call, ~50 us of CPU per call (Node's http2, the
generator before it, took ~200: 0.4 of a core at 2 000/s, beside the service measured).
Reported: throughput, p50 / p99 latency, and exactness checked after the run (the usage the
service reports equals the allowed calls, each counted once); the same loads against the
no-op grpc.aio Consume first (the floor: where the ceiling is on this machine, in this run);
for each load, the garbage collector's pauses in the service meanwhile (from its
`entitlements_gc_pause_seconds`, where its p99 went before 2026-12-08), and the buffers
PostgreSQL's checkpointer wrote and the WAL written meanwhile (what else the two cores did).

Part of `make bench`; alone: `make build/consume_load && .venv/bin/python -m bench.run consume`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.quiet import settle
from bench.stack import SYNC_SECRET, database, free_port, process, service, wait_serving
from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc

CALLS = int(os.environ.get("BENCH_CONSUME_CALLS", "20000"))
RATE = int(os.environ.get("BENCH_CONSUME_RATE", "2000"))  # the target, calls/s
CONNECTIONS, STREAMS = 4, 16  # h2load's -c 4 -m 16, as the CanUse figures
SUBJECTS = 10_000
METER = "aiInsightsPerMonth"
HOT = "user_bench_hot"
LOAD = Path(__file__).parents[1] / "build" / "consume_load"  # make build/consume_load


def _generate(target: str, subjects: list[str], calls: int, rate: int) -> dict[str, Any]:
    """`calls` Consumes from the generator (fresh keys; `rate` calls/s open-loop, else
    closed-loop): its JSON report."""
    if not LOAD.exists():
        raise SystemExit(f"{LOAD} is missing: `make build/consume_load` builds it")
    prefix = f"bench-{secrets.token_hex(4)}"
    done = subprocess.run(
        [
            str(LOAD),
            target,
            str(calls),
            str(CONNECTIONS),
            str(STREAMS),
            METER,
            prefix,
            *subjects,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CONSUME_RATE": str(rate)},
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _summary(result: dict[str, Any], calls: int) -> dict[str, Any]:
    return {
        "calls": calls,
        "per_second": round(calls / result["seconds"]),
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "allowed": sum(result["allowed"].values()),
        "failures": result["failures"],
    }


def _load(
    target: str,
    subjects: list[str],
    calls: int,
    rate: int = 0,
    before: dict[str, int] | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """`calls` Consumes (_generate), then exactness: the usage the service reports for each
    subject equals the calls it allowed (with those `before` allowed of an earlier load on the
    same subjects), each counted once. Also returned: the allowed calls by subject."""
    result = _generate(target, subjects, calls, rate)
    allowed: dict[str, int] = result["allowed"]
    with grpc.insecure_channel(target) as channel:
        stub = usage_grpc.UsageServiceStub(channel)
        exact = result["failures"] == 0 and all(
            stub.GetUsage(usage_pb.GetUsageRequest(subject=who), timeout=30).usage[0].used
            == allowed.get(who, 0) + (before or {}).get(who, 0)
            for who in set(subjects)
        )
    return {**_summary(result, calls), "exact": exact}, allowed


def floor(logs: Path) -> dict[str, Any]:
    """The same loads against the no-op grpc.aio Consume (bench/noop_server.py): what grpc.aio
    and the load generator cost by themselves on this machine in this run, the ceiling under
    the service's figures. The open-loop load starts on a quiet machine (bench/quiet.py)."""
    target = f"127.0.0.1:{free_port()}"
    command = [sys.executable, str(Path(__file__).with_name("noop_server.py")), target]
    with process(command, {}, "consume-floor", logs):
        wait_serving(target)
        closed = _summary(_generate(target, [HOT], CALLS, 0), CALLS)
        settled = settle()
        at_rate = _summary(_generate(target, [HOT], CALLS, RATE), CALLS)
        return {"floor": closed, "floor_at_rate": {**at_rate, "settled": settled}}


GC_PAUSES = "entitlements_gc_pause_seconds"


def _gc_buckets(metrics_text: str) -> dict[float, float]:
    """Pauses of every generation by bucket (upper bound in seconds: count at or below),
    and their total seconds under the key -1."""
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != GC_PAUSES:
            continue
        for sample in family.samples:
            if sample.name == f"{GC_PAUSES}_bucket":
                bound = float(sample.labels["le"])
                found[bound] = found.get(bound, 0.0) + sample.value
            elif sample.name == f"{GC_PAUSES}_sum":
                found[-1.0] = found.get(-1.0, 0.0) + sample.value
    return found


def gc_pauses(before: str, after: str) -> dict[str, Any]:
    """The collector's pauses between two scrapes of a service's /metrics: how many, how
    many longer than 5 ms, their total, and the bucket bound the longest fell under."""
    was, now = _gc_buckets(before), _gc_buckets(after)
    grew = {bound: now[bound] - was.get(bound, 0.0) for bound in now}
    bounds = sorted(b for b in grew if b >= 0)
    total = grew[bounds[-1]] if bounds else 0.0  # +Inf: every pause
    if not total:
        return {"pauses": 0, "over_5_ms": 0, "total_ms": 0.0, "longest_under_ms": 0.0}
    under_5 = grew.get(0.005, 0.0)
    longest = next((b for b in bounds if grew[b] == total), bounds[-1])
    return {
        "pauses": int(total),
        "over_5_ms": int(total - under_5),
        "total_ms": round(grew.get(-1.0, 0.0) * 1e3, 1),
        "longest_under_ms": longest * 1e3,
    }


@dataclass(frozen=True)
class Watched:
    """Where to read what happened beside a load: the service's /metrics (`host:port`) and
    its database (the server's checkpointer writes and WAL, cluster-wide)."""

    metrics: str
    dsn: str


def _server_counters(dsn: str) -> tuple[int, int]:
    """(buffers the checkpointer has written, WAL bytes written) so far, cluster-wide."""

    async def read() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                """SELECT buffers_checkpoint,
                          pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal
                     FROM pg_stat_bgwriter"""
            )
        finally:
            await conn.close()
        assert row is not None
        return int(row["buffers_checkpoint"]), int(row["wal"])

    return asyncio.run(read())


def _scrape(metrics: str) -> str:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


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


def _load_watched(
    watched: Watched,
    target: str,
    subjects: list[str],
    calls: int,
    rate: int,
    before: dict[str, int] | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """_load, with the service's collector pauses, the buffers PostgreSQL's checkpointer
    wrote and the WAL written during it; an open-loop load starts on a quiet machine
    (bench/quiet.py)."""
    settled = settle() if rate else None
    scraped, (written, wal) = _scrape(watched.metrics), _server_counters(watched.dsn)
    result, allowed = _load(target, subjects, calls, rate, before)
    written_after, wal_after = _server_counters(watched.dsn)
    found = {
        **result,
        "gc": gc_pauses(scraped, _scrape(watched.metrics)),
        "checkpointer_buffers": written_after - written,
        "wal_mb": round((wal_after - wal) / 1e6, 1),
    }
    return ({**found, "settled": settled} if settled else found), allowed


def measure(target: str, sync_secret: str, watched: Watched) -> dict[str, Any]:
    """The loads against a serving service with a fresh database: closed-loop (as many calls
    as the service answers, 64 in flight: the CanUse shape) and open-loop at RATE calls/s (the
    latency a caller sees at that rate). Over 10 000 subjects, open loop twice: on subjects
    seen before (the closed-loop run's, their entitlements cached and counters made: a serving
    replica's steady state) and on subjects never seen (every first call a cache miss and a
    new counter: a cold start). Exactness is checked after every load."""
    results: dict[str, Any] = {
        "shape": f"{CONNECTIONS} connections x {STREAMS} streams",
        "rate": RATE,
    }
    for suffix, rate in (("", 0), ("_at_rate", RATE)):
        hot = f"{HOT}{suffix}"
        _unlimited_for(target, hot, sync_secret)
        results[f"hot_subject{suffix}"], _ = _load_watched(watched, target, [hot], CALLS, rate)
    many = [f"user_bench_{i}" for i in range(SUBJECTS)]
    results["distinct_subjects"], seen = _load_watched(watched, target, many, CALLS, 0)
    results["distinct_subjects_at_rate"], _ = _load_watched(
        watched, target, many, CALLS, RATE, before=seen
    )
    cold = [f"user_bench_cold_{i}" for i in range(SUBJECTS)]
    results["distinct_subjects_cold_at_rate"], _ = _load_watched(watched, target, cold, CALLS, RATE)
    return results


def bench() -> dict[str, Any]:
    """The no-op floor, then Consume on a service of its own over a fresh database."""
    logs = Path(tempfile.mkdtemp(prefix="ent-bench-consume-"))
    metrics = f"127.0.0.1:{free_port()}"
    below = floor(logs)
    with database() as dsn:
        manager, target = service(
            dsn, logs, "consume", env={"ENTITLEMENTS_METRICS_LISTEN": metrics}
        )
        with manager:
            wait_serving(target)
            return {**below, **measure(target, SYNC_SECRET, Watched(metrics, dsn))}


SERVICE_LOADS = (
    ("hot_subject", "one hot subject, closed loop"),
    ("hot_subject_at_rate", "one hot subject, {at}"),
    ("distinct_subjects", "10 000 subjects (first calls), closed loop"),
    ("distinct_subjects_at_rate", "10 000 subjects seen before, {at}"),
    ("distinct_subjects_cold_at_rate", "10 000 subjects never seen, {at}"),
)


def _line(how: str, r: dict[str, Any]) -> str:
    line = f"Consume{how}: {r['per_second']}/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
    settled = r.get("settled")
    if settled:
        never = ", never quiet" if settled["quiet"] is False else ""
        line += f" (started after {settled['waited_s']} s, {settled['idle_share']} idle{never})"
    return line


def _beside(r: dict[str, Any]) -> str:
    """What else happened during a service load (_load_watched)."""
    pauses = r["gc"]
    return (
        f"; collector: {pauses['pauses']} pauses, {pauses['over_5_ms']} over 5 ms, "
        f"{pauses['total_ms']} ms in all, the longest under {pauses['longest_under_ms']} ms; "
        f"checkpointer wrote {r['checkpointer_buffers']} buffers, WAL {r['wal_mb']} MB"
    )


def describe(results: dict[str, Any]) -> str:
    at = f"open loop at {results['rate']}/s"
    floor = " floor (no-op grpc.aio handler, the same generator)"
    lines = [
        _line(f"{floor}, closed loop", results["floor"]),
        _line(f"{floor}, {at}", results["floor_at_rate"]),
    ]
    for key, how in SERVICE_LOADS:
        r = results[key]
        lines.append(
            _line(f", {how.format(at=at)}", r)
            + f", {r['allowed']} allowed of {r['calls']}, exact: {r['exact']}"
            + _beside(r)
        )
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 20's Consume targets: 2 000/s (closed loop: what the service can answer) with
    p99 <= 25 ms at 2 000 calls/s offered (open loop), for one hot subject and for 10 000
    (seen before: a serving replica's steady state); every load exact. Also listed, without a
    target of their own: the closed-loop p99 (64 in flight: Little's law puts it near
    64 / throughput) and the cold start (10 000 subjects never seen, at the same rate)."""
    rate = results["rate"]
    found: dict[str, dict[str, Any]] = {}
    for name, label in (("hot_subject", "hot_subject"), ("distinct_subjects", "10k_subjects")):
        found[f"consume_{label}_per_second"] = {
            "value": results[name]["per_second"],
            "target": ">= 2000",
        }
        found[f"consume_{label}_p99_ms_at_{rate}_per_second"] = {
            "value": results[f"{name}_at_rate"]["p99_ms"],
            "target": "<= 25",
        }
        found[f"consume_{label}_p99_ms_closed_loop"] = {
            "value": results[name]["p99_ms"],
            "target": "(64 in flight: reported)",
        }
    found[f"consume_10k_new_subjects_p99_ms_at_{rate}_per_second"] = {
        "value": results["distinct_subjects_cold_at_rate"]["p99_ms"],
        "target": "(cold start: reported)",
    }
    for name, label in (
        ("hot_subject_at_rate", "hot_subject"),
        ("distinct_subjects_at_rate", "10k_subjects"),
    ):
        found[f"consume_{label}_gc_pauses_over_5_ms_at_{rate}_per_second"] = {
            "value": results[name]["gc"]["over_5_ms"],
            "target": "(the service's collector, reported)",
        }
    found["consume_exact"] = {
        "value": all(results[key]["exact"] for key, _ in SERVICE_LOADS),
        "target": "true",
    }
    # Where the ceiling is: grpc.aio with nothing to do, under the same generator, this run.
    found["consume_floor_per_second"] = {
        "value": results["floor"]["per_second"],
        "target": "(no-op floor: reported)",
    }
    found[f"consume_floor_p99_ms_at_{rate}_per_second"] = {
        "value": results["floor_at_rate"]["p99_ms"],
        "target": "(no-op floor: reported)",
    }
    found["consume_hot_subject_vs_floor_per_second"] = {
        "value": round(results["hot_subject"]["per_second"] / results["floor"]["per_second"], 3),
        "target": "(reported)",
    }
    return found
