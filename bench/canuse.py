"""CanUse under load: h2load (HTTP/2 from C) against several servers side by side.

The shared two cores move throughput by 10 to 30 % from one minute to the next, and two
processes of the same build can differ by 5 to 10 % for as long as they live, far more than
the differences measured here (metrics on or off is a few percent). So the servers are
measured in alternating rounds, each round in a rotated order, configurations compared are run
as two processes each, and results are medians; each run also records the CPU time the server
process spent per call.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.stack import free_port, process

CANUSE_PATH = "/entitlements.v1.EntitlementService/CanUse"
SUBJECT = "user_bench_pro"  # the subject every CanUse load asks about (on pro)
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "30000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
PAIR_ROUNDS = int(os.environ.get("BENCH_PAIR_ROUNDS", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "8"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "16"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Load:
    """h2load's shape: connections, each with this many calls in flight."""

    connections: int = CONNECTIONS
    streams: int = STREAMS

    def __str__(self) -> str:
        return f"{self.connections}x{self.streams}"


# The external measurement (h2load -c 4 -m 16), run beside the default shape.
_second = os.environ.get("BENCH_SECOND_LOAD", "4x16").partition("x")
SECOND_LOAD = Load(int(_second[0]), int(_second[2]))


@dataclass(frozen=True)
class Contender:
    name: str
    target: str
    process: psutil.Process
    headers: tuple[str, ...] = ()
    load: Load = Load()


H2LOAD_MISSING = (
    "make bench needs h2load, the HTTP/2 load generator of Debian's nghttp2-client package, "
    "and could not install it: run `apt-get install nghttp2-client` as root (or put an h2load "
    "on PATH) and run it again"
)


def ensure_h2load() -> str:
    """h2load's path; Debian's nghttp2-client installed first when it is missing (the Makefile
    does the same before `make bench`), with a clear message when that cannot be done."""
    found = shutil.which("h2load")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit(H2LOAD_MISSING)
    log("h2load not found: installing Debian's nghttp2-client …")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "nghttp2-client"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh image has no package lists yet.
        subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    found = shutil.which("h2load")
    if not found:
        raise SystemExit(H2LOAD_MISSING)
    return found


def start_floor(stack: ExitStack, name: str, logs: Path) -> Contender:
    """The no-op grpc.aio server (bench/noop_server.py) on a free port, stopped with `stack`."""
    target = f"127.0.0.1:{free_port()}"
    command = [sys.executable, str(Path(__file__).with_name("noop_server.py")), target]
    return Contender(name, target, stack.enter_context(process(command, {}, name, logs)))


def paired_ratio(runs: Runs, floor: Runs) -> dict[str, Any]:
    """Throughput relative to the floor round by round (each pair measured within seconds of
    each other, so the machine's drift from one minute to the next cancels out): the median,
    and every round's ratio."""
    return pooled_ratio([runs], [floor])


def pooled_ratio(runs: list[Runs], floors: list[Runs]) -> dict[str, Any]:
    """As paired_ratio, each side's throughput in a round summed over its processes: two
    processes of the same code differ by several per cent for as long as they run (the
    floor against a second floor: 0.94), so one process a side can tilt the ratio either way."""
    ratios = [
        sum(r[i]["rps"] for r in runs) / sum(f[i]["rps"] for f in floors)
        for i in range(len(floors[0]))
    ]
    return {"median": statistics.median(ratios), "rounds": [round(r, 3) for r in ratios]}


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    target: str,
    data_file: Path,
    workdir: Path,
    n: int,
    headers: tuple[str, ...] = (),
    load: Load = Load(),
) -> dict[str, float]:
    """Throughput and latency percentiles of n CanUse calls (h2load's per-request log)."""
    log_file = workdir / f"h2load-{secrets.token_hex(4)}.tsv"
    out = subprocess.run(
        [
            ensure_h2load(),
            "-n",
            str(n),
            "-c",
            str(load.connections),
            "-m",
            str(load.streams),
            "-t",
            "1",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            *(arg for header in headers for arg in ("-H", header)),
            "-d",
            str(data_file),
            f"--log-file={log_file}",
            f"http://{target}{CANUSE_PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    succeeded = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
    latencies = sorted(
        int(line.split("\t")[2]) for line in log_file.read_text().splitlines() if line
    )
    log_file.unlink()
    return {
        "rps": rps,
        "succeeded": succeeded,
        "requests": n,
        "p50_ms": latencies[len(latencies) // 2] / 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1000,
    }


def main_thread_cpu(process: psutil.Process) -> float:
    """CPU seconds of the process's main thread: the event loop, where all of grpc.aio's
    Python work runs (grpc core's own threads are the rest of the process's time)."""
    fields = Path(f"/proc/{process.pid}/task/{process.pid}/stat").read_text().rpartition(")")
    utime, stime = fields[2].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def measure(c: Contender, data_file: Path, workdir: Path, n: int = REQUESTS) -> dict[str, float]:
    """One h2load run (after a short warm-up), with the server's CPU time per call, all of
    it and its event loop's."""
    h2load(c.target, data_file, workdir, max(1000, n // 10), c.headers, c.load)
    before, loop_before = c.process.cpu_times(), main_thread_cpu(c.process)
    result = h2load(c.target, data_file, workdir, n, c.headers, c.load)
    after, loop_after = c.process.cpu_times(), main_thread_cpu(c.process)
    cpu = (after.user - before.user) + (after.system - before.system)
    return {
        **result,
        "cpu_us_per_call": cpu / n * 1e6,
        "loop_cpu_us_per_call": (loop_after - loop_before) / n * 1e6,
    }


Runs = list[dict[str, float]]


def side_by_side(
    contenders: list[Contender], data_file: Path, workdir: Path, rounds: int = ROUNDS
) -> dict[str, Runs]:
    """Every contender once per round, in an order rotated each round: each one's runs."""
    runs: dict[str, Runs] = {c.name: [] for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            runs[c.name].append(measure(c, data_file, workdir))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {rs[-1]['rps']:.0f}/s" for name, rs in runs.items()
        ))  # fmt: skip
    return runs


def summary(runs: Runs) -> dict[str, Any]:
    """Medians of runs (of one server, or pooled over servers of one configuration)."""
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_call", "loop_cpu_us_per_call")
    return {
        **{k: statistics.median(run[k] for run in runs) for k in keys},
        "requests": REQUESTS,
        "succeeded": min(int(run["succeeded"]) for run in runs),
        "runs": [round(run["rps"]) for run in runs],
    }


@contextmanager
def scraping(urls: list[str]) -> Iterator[list[int]]:
    """Scrape each of `urls` every second (far more often than Prometheus would) while
    inside; yields the sizes of the pages read."""
    stop = threading.Event()
    sizes: list[int] = []

    def scrape() -> None:
        while not stop.wait(1.0):
            for url in urls:
                with urllib.request.urlopen(url, timeout=5) as response:
                    sizes.append(len(response.read()))

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join()
