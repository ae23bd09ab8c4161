"""Cached CanUse of several builds of the service against the no-op floor, side by side.

    .venv/bin/python -m bench.compare NAME=DIR [NAME=DIR ...]

Each DIR holds a `service` package (a checkout, or `git archive REV service | tar -x -C DIR`)
that is put first on the service's PYTHONPATH; `NAME=.` is this tree. All of them and the
floor run at once against one fresh database, and h2load measures each in turn, in rounds
whose order rotates (bench/canuse.py), for every load shape of BENCH_LOADS (default
"4x16,8x16"; BENCH_REQUESTS calls a run, BENCH_PAIR_ROUNDS rounds). Printed per build: the
medians, the throughput ratio to the floor round by round, and the event loop's CPU per call
against the floor's (the thread where all of grpc.aio's Python work runs, which saturates
first, so the cost that decides throughput, and far steadier than throughput on shared cores).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from bench import canuse
from bench.stack import database, service, wait_serving
from entitlements.v1 import entitlement_service_pb2 as pb

LOADS = [
    canuse.Load(*(int(x) for x in shape.split("x", 1)))
    for shape in os.environ.get("BENCH_LOADS", "4x16,8x16").split(",")
]


def main(builds: list[str]) -> int:
    if not builds or any("=" not in b for b in builds):
        print(__doc__, file=sys.stderr)
        return 2
    canuse.ensure_h2load()
    work = Path(tempfile.mkdtemp(prefix="ent-compare-"))
    data_file = work / "canuse.bin"
    request = pb.CanUseRequest(subject=canuse.SUBJECT, feature="dataExport")
    data_file.write_bytes(canuse.grpc_frame(request.SerializeToString()))
    with database() as dsn, ExitStack() as stack:
        contenders = [canuse.start_floor(stack, "floor", work)]
        for build in builds:
            name, _, tree = build.partition("=")
            path = str(Path(tree).resolve())
            cm, target = service(dsn, work, name, env={"PYTHONPATH": path})
            contenders.append(canuse.Contender(name, target, stack.enter_context(cm)))
        for c in contenders:
            wait_serving(c.target)
        for load in LOADS:
            shaped = [replace(c, load=load) for c in contenders]
            canuse.log(f"h2load {load} (connections x streams), {canuse.PAIR_ROUNDS} rounds")
            runs = canuse.side_by_side(shaped, data_file, work, canuse.PAIR_ROUNDS)
            base = canuse.summary(runs["floor"])
            for c in shaped:
                s = canuse.summary(runs[c.name])
                ratio = canuse.paired_ratio(runs[c.name], runs["floor"])
                loop = [
                    r["loop_cpu_us_per_call"] / f["loop_cpu_us_per_call"]
                    for r, f in zip(runs[c.name], runs["floor"], strict=True)
                ]
                print(
                    f"{load} {c.name:>12}: {s['rps']:6.0f} req/s, p50 {s['p50_ms']:.1f} ms,"
                    f" p99 {s['p99_ms']:.1f} ms, loop CPU {s['loop_cpu_us_per_call']:.0f} µs/call"
                    f" | vs floor: throughput {ratio['median']:.3f} {ratio['rounds']},"
                    f" loop CPU {statistics.median(loop):.3f}"
                    f" (medians {s['loop_cpu_us_per_call'] / base['loop_cpu_us_per_call']:.3f})",
                    flush=True,
                )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
