"""`make bench`: everything started on this machine, measured in one run, side by side.

* CanUse throughput, p50/p99 and server CPU per call (all of it, and its event loop's) under
  one load generator (h2load, HTTP/2 from C), in alternating rounds (bench/canuse_compared.py),
  for: a no-op grpc.aio handler (the floor), CanUse with the cache, with the cache off, and with
  metrics and tracing both off and both on; the floor and cached CanUse under a second load
  shape as well (4 connections of 16 streams, the issue's external measurement).
* The client library's local check (in-process checks/s and per-call p50/p99).
* Webhook ingest end to end (signed deliveries/s through gateway → service → PostgreSQL, p99).
* Freshness: webhook 2xx through replica A → CanUse changes on replica B (p50/p99).
* Memory per 100k cached subjects (RSS growth of a service process).
* Consume (bench/consume.py) and usage storage as it grows (bench/usage_growth.py).

Writes bench/results/latest.json and bench/results/latest.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import canuse, canuse_compared, consume, notify, scale, usage_growth
from bench.canuse import SUBJECT, log
from bench.results_file import merge_into_latest
from bench.stack import (
    BIN,
    SYNC_SECRET,
    database,
    free_port,
    process,
    service,
    wait_serving,
)
from bench.webhooks import (
    SIGNING_SECRET,
    bench_freshness,
    bench_ingest,
    bench_ingest_one,
)
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_client import EntitlementsClient

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def bench_local_client(target: str) -> dict[str, float]:
    with EntitlementsClient(target, local_cache=True) as client:
        assert client.wait_synced()
        assert client.can_use(SUBJECT, "dataExport")
        can_use = client.can_use
        n = 2_000_000
        started = time.perf_counter()
        for _ in range(n):
            can_use(SUBJECT, "dataExport")
        elapsed = time.perf_counter() - started
        samples = []
        clock = time.perf_counter_ns
        for _ in range(100_000):
            t0 = clock()
            can_use(SUBJECT, "dataExport")
            samples.append(clock() - t0)
        samples.sort()
    return {
        "checks": n,
        "per_second": n / elapsed,
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
    }


def bench_memory(proc: psutil.Process, target: str, subjects: int) -> dict[str, float]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EntitlementServiceStub(channel)
        stub.BatchCanUse(
            pb.BatchCanUseRequest(
                checks=[pb.CanUseRequest(subject="user_warm", feature="aiInsights")]
            )
        )
        before = proc.memory_info().rss
        for start in range(0, subjects, 1000):
            checks = [
                pb.CanUseRequest(subject=f"user_mem_{i}", feature="aiInsights")
                for i in range(start, min(subjects, start + 1000))
            ]
            stub.BatchCanUse(pb.BatchCanUseRequest(checks=checks), timeout=60)
        after = proc.memory_info().rss
    return {"subjects": subjects, "rss_growth_mib": (after - before) / 2**20}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rpc = results["canuse"]
    names = ["no-op floor", "CanUse cached", "CanUse cache off"]
    keys = ["floor", "cached", "cache_off"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].bar(names, [rpc[k]["rps"] for k in keys], color=["#999", "#2a7", "#c52"])
    axes[0].set_title("CanUse throughput (req/s, h2load)")
    x = range(len(keys))
    axes[1].bar([i - 0.2 for i in x], [rpc[k]["p50_ms"] for k in keys], width=0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], [rpc[k]["p99_ms"] for k in keys], width=0.4, label="p99")
    axes[1].set_xticks(list(x), names)
    axes[1].set_title("CanUse latency (ms)")
    axes[1].legend()
    other = {
        "local check\n(M checks/s)": results["client_local"]["per_second"] / 1e6,
        "ingest\n(100 deliveries/s)": results["ingest"]["per_second"] / 100,
        "freshness p99\n(10 ms)": results["freshness"]["p99_ms"] / 10,
    }
    axes[2].bar(list(other), list(other.values()), color="#57a")
    axes[2].set_title("client, ingest, freshness (scaled units)")
    fig.suptitle(
        f"{results['machine']['cpu']} · {results['machine']['cores']} cores · {results['when']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    if sys.argv[1:] == ["consume"]:  # one benchmark alone
        print(consume.describe(consume.bench()))
        return 0
    if sys.argv[1:] == ["notify"]:  # alone, merged into latest.json (its targets too)
        found = notify.bench()
        print(notify.describe(found))
        merge_into_latest(RESULTS / "latest.json", "notify", found, notify.targets(found))
        return 0
    if sys.argv[1:] == ["growth"]:  # BENCH_GROWTH_RECORDS scales it (default 10 000 000)
        return usage_growth.alone(RESULTS / "latest.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    canuse.ensure_h2load()
    work = Path(tempfile.mkdtemp(prefix="ent-bench-"))
    data_file = work / "canuse.bin"
    frame = pb.CanUseRequest(subject=SUBJECT, feature="dataExport").SerializeToString()
    data_file.write_bytes(canuse.grpc_frame(frame))
    results: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "load": {
            "requests": canuse.REQUESTS,
            "rounds": canuse.ROUNDS,
            "connections": canuse.CONNECTIONS,
            "streams_per_connection": canuse.STREAMS,
        },
    }
    cpu_model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
        if Path("/proc/cpuinfo").exists()
        else None
    )
    if cpu_model:
        results["machine"]["cpu"] = cpu_model
    with database() as dsn, ExitStack() as stack:
        svc_proc_cm, target_a = service(dsn, work, "service-a")
        proc_a = stack.enter_context(svc_proc_cm)
        b_cm, target_b = service(dsn, work, "service-b")
        stack.enter_context(b_cm)
        gw_port = free_port()
        gateway_env = {
            "ENTITLEMENTS_TARGET": target_a,
            "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
            "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
            "GATEWAY_LISTEN": f"127.0.0.1:{gw_port}",
        }
        gateway_cmd = [str(BIN / "entitlements-gateway"), "--log-level", "WARNING"]
        stack.enter_context(process(gateway_cmd, gateway_env, "gateway", work))
        for target in (target_a, target_b):
            wait_serving(target)
        url = f"http://127.0.0.1:{gw_port}/api/webhooks/clerk-billing"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", gw_port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # The benchmark subject is on pro, so every path resolves a real item.
        asyncio.run(bench_ingest_one(url, SUBJECT))

        results["canuse"], results["observability"] = canuse_compared.measure(
            dsn, work, data_file, canuse.Contender("cached", target_a, proc_a)
        )
        if sys.argv[1:] == ["canuse"]:  # the CanUse comparisons alone, printed
            print(json.dumps(results["canuse"], indent=2))
            return 0
        log("client library, local check …")
        results["client_local"] = bench_local_client(target_a)
        log(f"  {results['client_local']}")
        log("ingest through the gateway …")
        results["ingest"] = asyncio.run(bench_ingest(url, 3000, 32))
        log(f"  {results['ingest']}")
        log("freshness across replicas …")
        results["freshness"] = asyncio.run(bench_freshness(url, target_b, 200))
        log(f"  {results['freshness']}")
        log("memory per 100k cached subjects …")
        results["memory"] = bench_memory(proc_a, target_a, 100_000)
        log(f"  {results['memory']}")
        results["growth"] = scale.growth(url, proc_a, target_a, target_b, dsn, work, SYNC_SECRET)
    log("Consume: one hot subject, then 10 000 subjects …")
    results["consume"] = consume.bench()
    log(consume.describe(results["consume"]))
    results["usage_growth"] = usage_growth.bench()
    log(usage_growth.describe(results["usage_growth"]))
    results["notify"] = notify.bench()
    log(notify.describe(results["notify"]))

    c, f, o = (
        results["canuse"]["cached"],
        results["canuse"]["floor"],
        results["canuse"]["cache_off"],
    )
    c4, f4 = results["canuse"]["cached_4x16"], results["canuse"]["floor_4x16"]
    results["targets"] = {
        # Round by round (canuse.paired_ratio): each pair ran within seconds of each other.
        "cached_vs_floor_throughput": {"value": c["vs_floor"]["median"], "target": ">= 0.9"},
        "cached_vs_floor_p99": {"value": c["p99_ms"] / f["p99_ms"], "target": "<= 1.3"},
        "cached_vs_floor_throughput_4x16": {
            "value": c4["vs_floor"]["median"],
            "target": ">= 0.9",
        },
        "cached_vs_floor_p99_4x16": {"value": c4["p99_ms"] / f4["p99_ms"], "target": "<= 1.3"},
        "cached_vs_cache_off_throughput": {"value": c["rps"] / o["rps"], "target": ">= 3"},
        "metrics_and_tracing_on_vs_off_throughput": {
            "value": results["observability"]["on_vs_off_throughput"],
            "target": ">= 0.95",
        },
        "metrics_and_tracing_share_of_cached_canuse_cpu": {
            "value": results["observability"]["in_process"]["share_of_cached_canuse_cpu"],
            "target": "<= 0.05",
        },
        "client_local_checks_per_second": {
            "value": results["client_local"]["per_second"],
            "target": ">= 1000000",
        },
        "freshness_p99_ms": {"value": results["freshness"]["p99_ms"], "target": "<= 100"},
        "ingest_per_second": {"value": results["ingest"]["per_second"], "target": ">= 300"},
        **consume.targets(results["consume"]),
        **scale.growth_targets(results["growth"]),
        **notify.targets(results["notify"]),
    }
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / "latest.png")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results["targets"], indent=2))
    print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
