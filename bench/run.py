"""`make bench`: everything started on this machine, measured in one run, side by side.

* CanUse throughput, p50/p99 and server CPU per call (all of it, and its event loop's) under
  one load generator (h2load, HTTP/2 from C), in alternating rounds (bench/canuse.py), for: a
  no-op grpc.aio handler (the floor), CanUse with the cache, with the cache off, and with
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
import secrets
import shutil
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import canuse, consume, instrumentation_cost, notify, scale, usage_growth
from bench.canuse import log
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
SUBJECT = "user_bench_pro"


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


def bench_canuse(
    dsn: str, work: Path, data_file: Path, cached: canuse.Contender
) -> tuple[dict[str, Any], dict[str, Any]]:
    """CanUse side by side, in alternating rounds: the no-op floor, the service as configured
    by default (`cached`: metrics on, tracing off), with its cache off, with metrics and
    tracing both off ("bare") and with both on ("instrumented": spans to a local OTLP sink,
    /metrics scraped every second), these two as two processes each. Then, for scale, calls
    that each carry a sampled trace context (a span each). Only what these measurements need
    runs while they run."""
    sink_port = free_port()
    sink_cmd = [sys.executable, str(ROOT / "bench" / "otlp_sink.py"), str(sink_port)]
    metrics_ports = [free_port(), free_port()]
    with ExitStack() as stack:
        # Two processes of the floor and two of cached CanUse (`cached` and one more as
        # configured by default), pooled round by round (canuse.pooled_ratio).
        floors = []
        for i in (1, 2):
            port = free_port()
            floor_cmd = [
                sys.executable,
                str(ROOT / "bench" / "noop_server.py"),
                f"127.0.0.1:{port}",
            ]
            floors.append(
                canuse.Contender(
                    f"floor-{i}",
                    f"127.0.0.1:{port}",
                    stack.enter_context(process(floor_cmd, {}, f"floor-{i}", work)),
                )
            )
        second_cm, second_target = service(dsn, work, "service-cached-2")
        cacheds = [
            replace(cached, name="cached-1"),
            canuse.Contender("cached-2", second_target, stack.enter_context(second_cm)),
        ]
        stack.enter_context(process(sink_cmd, {}, "otlp-sink", work))
        configurations: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
            ("cache_off", ("--no-cache",), {})
        ]
        for i, port in enumerate(metrics_ports, 1):
            configurations += [
                (f"bare-{i}", (), {"ENTITLEMENTS_METRICS_LISTEN": "off"}),
                (
                    f"instrumented-{i}",
                    (),
                    {
                        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{port}",
                        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                    },
                ),
            ]
        # The issue's external measurement as well: 4 connections of 16 streams, the floor
        # and cached CanUse (the same processes), in the same alternating rounds.
        pair = [
            replace(c, name=f"{c.name}{suffix}", load=load)
            for suffix, load in (("", canuse.Load()), ("_4x16", canuse.SECOND_LOAD))
            for c in (floors[0], cacheds[0], floors[1], cacheds[1])
        ]
        contenders = list(pair)
        for name, extra, env in configurations:
            cm, target = service(dsn, work, f"service-{name}", *extra, env=env)
            contenders.append(canuse.Contender(name, target, stack.enter_context(cm)))
        for c in contenders:
            wait_serving(c.target)
            if c.target not in {f.target for f in floors}:
                with grpc.insecure_channel(c.target) as ch:
                    r = pb_grpc.EntitlementServiceStub(ch).CanUse(
                        pb.CanUseRequest(subject=SUBJECT, feature="dataExport")
                    )
                    assert r.allowed and r.plan == "pro", r
        # The floor against cached CanUse first, by themselves: with every contender in one
        # round, a pair is measured a minute apart and the machine's drift swamps the ratio.
        log(f"CanUse: {', '.join(c.name for c in pair)}, {canuse.PAIR_ROUNDS} rounds …")
        runs = canuse.side_by_side(pair, data_file, work, canuse.PAIR_ROUNDS)
        rest = contenders[len(pair) :]
        log(f"CanUse: {', '.join(c.name for c in rest)}, {canuse.ROUNDS} rounds …")
        urls = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports]
        with canuse.scraping(urls) as scrapes:
            runs.update(canuse.side_by_side(rest, data_file, work))
        log("CanUse, every call in a sampled trace (a span each) …")
        traceparent = f"traceparent: 00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        instrumented = contenders[-1]
        traced = canuse.Contender(
            "traced", instrumented.target, instrumented.process, (traceparent,)
        )
        every_call_traced = canuse.measure(traced, data_file, work)
        log(f"  {every_call_traced}")

    def pooled(prefix: str) -> dict[str, Any]:
        return canuse.summary(
            [run for name, rs in runs.items() if name.startswith(prefix) for run in rs]
        )

    off, on = pooled("bare-"), pooled("instrumented-")
    observability = {
        "off": off,
        "on": on,
        "on_vs_off_throughput": on["rps"] / off["rps"],
        "on_vs_off_p99": on["p99_ms"] / off["p99_ms"],
        "on_vs_off_cpu_per_call": on["cpu_us_per_call"] / off["cpu_us_per_call"],
        "per_process": {
            name: canuse.summary(rs)
            for name, rs in runs.items()
            if name.startswith(("bare-", "instrumented-"))
        },
        # The same cost measured exactly, in-process (bench/instrumentation_cost.py).
        "in_process": instrumentation_cost.measure(
            canuse.summary(runs["cached-1"] + runs["cached-2"])["cpu_us_per_call"]
        ),
        "scrapes": len(scrapes),
        "every_call_traced": every_call_traced,
    }
    compared: dict[str, Any] = {"cache_off": {**canuse.summary(runs["cache_off"]), "load": "8x16"}}
    for suffix, load in (("", canuse.Load()), ("_4x16", canuse.SECOND_LOAD)):
        floor_runs = [runs[f"floor-{i}{suffix}"] for i in (1, 2)]
        cached_runs = [runs[f"cached-{i}{suffix}"] for i in (1, 2)]
        floor_sum = canuse.summary([r for rs in floor_runs for r in rs])
        cached_sum = canuse.summary([r for rs in cached_runs for r in rs])
        compared[f"floor{suffix}"] = {**floor_sum, "load": str(load)}
        compared[f"cached{suffix}"] = {
            **cached_sum,
            "load": str(load),
            "vs_floor": canuse.pooled_ratio(cached_runs, floor_runs),
            "loop_cpu_vs_floor": cached_sum["loop_cpu_us_per_call"]
            / floor_sum["loop_cpu_us_per_call"],
            # The method's own spread: the same code in two processes, round by round.
            "floor_2_vs_floor_1": canuse.paired_ratio(floor_runs[1], floor_runs[0]),
            "cached_2_vs_cached_1": canuse.paired_ratio(cached_runs[1], cached_runs[0]),
            "per_process": {
                name: canuse.summary(runs[name])
                for name in (
                    *(f"floor-{i}{suffix}" for i in (1, 2)),
                    *(f"cached-{i}{suffix}" for i in (1, 2)),
                )
            },
        }
    return compared, observability


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

        results["canuse"], results["observability"] = bench_canuse(
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
