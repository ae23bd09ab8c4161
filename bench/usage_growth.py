"""Usage storage as it grows (issue 20): what N recorded consumptions over S subjects cost.

The database is loaded straight with SQL (generate_series, in chunks), not through the API: N
records (default 10 000 000, `BENCH_GROWTH_RECORDS`) of S subjects (default N / 100,
`BENCH_GROWTH_SUBJECTS`) spread evenly over the last SPAN_DAYS, each subject's calls
interleaved in time as real traffic is, and one counter per subject in the current calendar
month (ROLLOVER of them in the previous one: their period has ended). Then, against a service
of its own over that database:

* the size of usage_records and usage_counters (heap, indexes, total; after VACUUM ANALYZE);
* Consume and GetUsage p50 / p99 over gRPC (CALLS each, CONCURRENCY in flight, random loaded
  subjects), checked: the count is kept within the period;
* the period roll-over: the first Consume of each subject whose period ended (counter reset);
* the roll-up of old records (housekeeping's roll_up_usage with the default 90-day retention):
  its time, the records it replaced, the size after it, after VACUUM, and after VACUUM FULL.

Part of `make bench`; alone: `.venv/bin/python -m bench.run growth` (merges its result into
bench/results/latest.json under "usage_growth").
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from grpc import aio

from bench.canuse import log
from bench.results_file import merge_into_latest
from bench.stack import database, service, wait_serving
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from service.adapters.postgres.store import Store
from service.domain.usage import month_of

RECORDS = int(os.environ.get("BENCH_GROWTH_RECORDS", "10000000"))
SUBJECTS = int(os.environ.get("BENCH_GROWTH_SUBJECTS", str(max(100, RECORDS // 100))))
CALLS = int(os.environ.get("BENCH_GROWTH_CALLS", "3000"))
CONCURRENCY = 8
ROLLOVER = min(2000, SUBJECTS // 10)  # subjects whose counter's period has ended
SPAN_DAYS = 180
RETENTION_DAYS = 90  # the service's default ENTITLEMENTS_USAGE_RETENTION_SECONDS
CHUNK = 1_000_000
METER = "aiInsightsPerMonth"  # 20 a calendar month on free
PREFIX = "user_growth_"

_RECORDS_SQL = """
INSERT INTO usage_records (seq, subject, meter, idempotency_key, kind, amount, allowed,
                           used_after, remaining_after, unlimited, limit_value,
                           period_start_ms, resets_at_ms, recorded_at_ms, recorded_at)
SELECT g, $7 || (g % $3), $4, 'bulk-' || g, 'consume', 1, true,
       1 + (g / $3) % 19, 19 - (g / $3) % 19, false, 20,
       (extract(epoch FROM date_trunc('month', t, 'UTC')) * 1000)::bigint,
       (extract(epoch FROM date_trunc('month', t, 'UTC') + interval '1 month') * 1000)::bigint,
       (extract(epoch FROM t) * 1000)::bigint, t
  FROM generate_series($1::bigint, $2::bigint) AS g,
       LATERAL (SELECT now() - make_interval(secs => ($5::bigint - g) * $6::float8)) AS x(t)
"""
_COUNTERS_SQL = """
INSERT INTO usage_counters (subject, meter, period_start_ms, period_end_ms, used)
SELECT $6 || i, $2,
       CASE WHEN i < $3 THEN $4::bigint ELSE $5::bigint END,
       CASE WHEN i < $3 THEN $5::bigint ELSE $7::bigint END,
       i % 10
  FROM generate_series(0, $1 - 1) AS i
"""
_SIZES_SQL = """
SELECT c AS tbl, pg_relation_size(c) AS heap, pg_indexes_size(c) AS indexes,
       pg_total_relation_size(c) AS total
  FROM unnest(ARRAY['usage_records', 'usage_counters']::regclass[]) AS c
"""


def _mb(n: int) -> float:
    return round(n / 1024 / 1024, 1)


async def _sizes(conn: asyncpg.Connection[Any]) -> dict[str, dict[str, float]]:
    rows = await conn.fetch(_SIZES_SQL)
    return {
        str(r["tbl"]): {
            "heap_mb": _mb(r["heap"]),
            "indexes_mb": _mb(r["indexes"]),
            "total_mb": _mb(r["total"]),
        }
        for r in rows
    }


async def _timed(conn: asyncpg.Connection[Any], sql: str) -> float:
    started = time.perf_counter()
    await conn.execute(sql)
    return round(time.perf_counter() - started, 2)


async def load(dsn: str, now_ms: int) -> dict[str, Any]:
    """Bulk-load the records and counters; their size after VACUUM ANALYZE."""
    this_month = month_of(now_ms)
    last_month = month_of(this_month.start_ms - 1)
    assert this_month.end_ms is not None
    seconds_apart = SPAN_DAYS * 86_400 / RECORDS
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for lo in range(1, RECORDS + 1, CHUNK):
            hi = min(lo + CHUNK - 1, RECORDS)
            await conn.execute(
                _RECORDS_SQL, lo, hi, SUBJECTS, METER, RECORDS, seconds_apart, PREFIX
            )
            log(f"  usage_records: {hi:,} of {RECORDS:,} loaded")
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('usage_records', 'seq'), $1)", RECORDS
        )
        await conn.execute(
            _COUNTERS_SQL,
            SUBJECTS,
            METER,
            ROLLOVER,
            last_month.start_ms,
            this_month.start_ms,
            PREFIX,
            this_month.end_ms,
        )
        load_seconds = round(time.perf_counter() - started, 1)
        vacuum_seconds = await _timed(conn, "VACUUM ANALYZE usage_records, usage_counters")
        return {
            "load_seconds": load_seconds,
            "vacuum_analyze_seconds": vacuum_seconds,
            "sizes": await _sizes(conn),
            "bytes_per_record": round(
                (await conn.fetchval("SELECT pg_total_relation_size('usage_records')")) / RECORDS
            ),
        }
    finally:
        await conn.close()


async def _latencies(calls: list[Callable[[], Awaitable[Any]]]) -> dict[str, Any]:
    """Run the calls CONCURRENCY at a time; p50 / p99 (ms) and calls per second."""
    latencies: list[float] = []
    pending = iter(calls)

    async def worker() -> None:
        for call in pending:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    cut = statistics.quantiles(latencies, n=100)
    return {
        "calls": len(latencies),
        "per_second": round(len(latencies) / elapsed),
        "p50_ms": round(cut[49] * 1000, 2),
        "p99_ms": round(cut[98] * 1000, 2),
    }


async def calls(target: str) -> dict[str, Any]:
    """Consume and GetUsage on loaded subjects, then the first Consume after a period ended."""
    rng = random.Random(20)
    steady = [f"{PREFIX}{rng.randrange(ROLLOVER, SUBJECTS)}" for _ in range(CALLS)]
    ended = [f"{PREFIX}{i}" for i in range(ROLLOVER)]
    async with aio.insecure_channel(target) as channel:
        stub = usage_grpc.UsageServiceStub(channel)
        probe = steady[0]
        before = (await stub.GetUsage(usage_pb.GetUsageRequest(subject=probe))).usage[0].used

        def consume(who: str, key: str) -> Callable[[], Awaitable[Any]]:
            request = usage_pb.ConsumeRequest(
                subject=who, limit=METER, amount=1, idempotency_key=key
            )
            return lambda: stub.Consume(request, timeout=30)

        def get_usage(who: str) -> Callable[[], Awaitable[Any]]:
            request = usage_pb.GetUsageRequest(subject=who)
            return lambda: stub.GetUsage(request, timeout=30)

        results: dict[str, Any] = {
            "consume": await _latencies(
                [consume(who, f"growth-{i}") for i, who in enumerate(steady)]
            ),
            "get_usage": await _latencies([get_usage(who) for who in rng.sample(steady, CALLS)]),
            "rollover_consume": await _latencies(
                [consume(who, f"rollover-{who}") for who in ended]
            ),
        }
        after = (await stub.GetUsage(usage_pb.GetUsageRequest(subject=probe))).usage[0].used
        reset = (await stub.GetUsage(usage_pb.GetUsageRequest(subject=ended[0]))).usage[0].used
    # The period's count was kept (not reset) where it had not ended, and reset where it had.
    results["counts_kept"] = after == min(20, before + steady.count(probe))
    results["rolled_over_to_one"] = reset == 1
    return results


async def roll_up(dsn: str) -> dict[str, Any]:
    """Housekeeping's roll-up with the default retention, then VACUUM and VACUUM FULL."""
    conn = await asyncpg.connect(dsn)
    store = await Store.open(dsn, migrate_schema=False)
    try:
        old = await conn.fetchval(
            """SELECT count(*) FROM usage_records
                WHERE recorded_at < now() - make_interval(days => $1)""",
            RETENTION_DAYS,
        )
        started = time.perf_counter()
        replaced = await store.roll_up_usage(RETENTION_DAYS * 86_400.0)
        seconds = round(time.perf_counter() - started, 2)
        result: dict[str, Any] = {
            "retention_days": RETENTION_DAYS,
            "records_older": old,
            "records_replaced": replaced,
            "records_left": await conn.fetchval("SELECT count(*) FROM usage_records"),
            "seconds": seconds,
            "sizes_after": await _sizes(conn),
        }
        result["vacuum_seconds"] = await _timed(conn, "VACUUM ANALYZE usage_records")
        result["sizes_after_vacuum"] = await _sizes(conn)
        result["vacuum_full_seconds"] = await _timed(conn, "VACUUM FULL usage_records")
        result["sizes_after_vacuum_full"] = await _sizes(conn)
        return result
    finally:
        await store.close()
        await conn.close()


def bench() -> dict[str, Any]:
    """Load, measure the calls, roll up: on a service of its own over a fresh database. Its
    own housekeeping keeps away (a retention of 100 years) so the roll-up is timed alone."""
    logs = Path(tempfile.mkdtemp(prefix="ent-bench-growth-"))
    results: dict[str, Any] = {
        "records": RECORDS,
        "subjects": SUBJECTS,
        "span_days": SPAN_DAYS,
        "rollover_subjects": ROLLOVER,
        "concurrency": CONCURRENCY,
    }
    with database() as dsn:
        no_housekeeping = {"ENTITLEMENTS_USAGE_RETENTION_SECONDS": str(100 * 365 * 86_400)}
        manager, target = service(dsn, logs, "growth", env=no_housekeeping)
        with manager:
            wait_serving(target)
            log(f"usage growth: loading {RECORDS:,} records over {SUBJECTS:,} subjects …")
            results["load"] = asyncio.run(load(dsn, int(time.time() * 1000)))
            log("usage growth: Consume, GetUsage, period roll-over …")
            results.update(asyncio.run(calls(target)))
        log("usage growth: roll-up of old records …")
        results["roll_up"] = asyncio.run(roll_up(dsn))
    return results


def describe(r: dict[str, Any]) -> str:
    records, up = r["load"]["sizes"]["usage_records"], r["roll_up"]
    return "\n".join(
        [
            f"usage growth: {r['records']:,} records over {r['subjects']:,} subjects, loaded in "
            f"{r['load']['load_seconds']} s: usage_records {records['total_mb']} MB "
            f"({records['heap_mb']} heap + {records['indexes_mb']} indexes, "
            f"{r['load']['bytes_per_record']} B/record)",
            *(
                f"  {name}: p50 {r[name]['p50_ms']} ms, p99 {r[name]['p99_ms']} ms, "
                f"{r[name]['per_second']}/s over {r[name]['calls']} calls"
                for name in ("consume", "get_usage", "rollover_consume")
            ),
            f"  counts kept: {r['counts_kept']}; rolled over to 1: {r['rolled_over_to_one']}",
            f"  roll-up ({up['retention_days']} d): {up['records_replaced']:,} records replaced "
            f"in {up['seconds']} s, {up['records_left']:,} left; usage_records "
            f"{up['sizes_after']['usage_records']['total_mb']} MB after, "
            f"{up['sizes_after_vacuum']['usage_records']['total_mb']} MB after VACUUM "
            f"({up['vacuum_seconds']} s), "
            f"{up['sizes_after_vacuum_full']['usage_records']['total_mb']} MB after VACUUM FULL "
            f"({up['vacuum_full_seconds']} s)",
        ]
    )


def alone(latest: Path) -> int:
    """`python -m bench.run growth`: run it, print it, merge it into latest.json."""
    results = bench()
    print(describe(results))
    merge_into_latest(latest, "usage_growth", results)
    return 0
