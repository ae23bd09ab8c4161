"""make bench's CanUse comparisons (bench/run.py): the no-op floor and cached CanUse, two
processes a side under two load shapes, then the service with its cache off and with metrics
and tracing off and on, all on one database, in alternating rounds (bench/canuse.py)."""

from __future__ import annotations

import secrets
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from bench import canuse, instrumentation_cost
from bench.canuse import SUBJECT, log
from bench.stack import free_port, process, service, wait_serving
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc


def measure(
    dsn: str, work: Path, data_file: Path, cached: canuse.Contender
) -> tuple[dict[str, Any], dict[str, Any]]:
    """CanUse side by side, in alternating rounds: the no-op floor, the service as configured
    by default (`cached`: metrics on, tracing off), with its cache off, with metrics and
    tracing both off ("bare") and with both on ("instrumented": spans to a local OTLP sink,
    /metrics scraped every second), these two as two processes each. Then, for scale, calls
    that each carry a sampled trace context (a span each). Only what these measurements need
    runs while they run."""
    sink_port = free_port()
    sink_cmd = [sys.executable, str(Path(__file__).with_name("otlp_sink.py")), str(sink_port)]
    metrics_ports = [free_port(), free_port()]
    with ExitStack() as stack:
        # Two processes of the floor and two of cached CanUse (`cached` and one more as
        # configured by default), pooled round by round (canuse.pooled_ratio).
        floors = [canuse.start_floor(stack, f"floor-{i}", work) for i in (1, 2)]
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
        floor_targets = {f.target for f in floors}
        for c in contenders:
            wait_serving(c.target)
            if c.target not in floor_targets:
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
            "per_process": {c.name: canuse.summary(runs[c.name]) for c in pair if c.load == load},
        }
    return compared, observability
