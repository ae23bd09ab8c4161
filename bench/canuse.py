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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

CANUSE_PATH = "/entitlements.v1.EntitlementService/CanUse"
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "30000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "8"))
STREAMS = int(os.environ.get("BENCH_STREAMS", "16"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Contender:
    name: str
    target: str
    process: psutil.Process
    headers: tuple[str, ...] = ()


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    log("h2load not found: installing Debian's nghttp2-client …")
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nghttp2-client"],
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
    )
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("h2load is needed (apt-get install nghttp2-client)")
    return found


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    target: str, data_file: Path, workdir: Path, n: int, headers: tuple[str, ...] = ()
) -> dict[str, float]:
    """Throughput and latency percentiles of n CanUse calls (h2load's per-request log)."""
    log_file = workdir / f"h2load-{secrets.token_hex(4)}.tsv"
    out = subprocess.run(
        [
            ensure_h2load(),
            "-n",
            str(n),
            "-c",
            str(CONNECTIONS),
            "-m",
            str(STREAMS),
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


def measure(c: Contender, data_file: Path, workdir: Path, n: int = REQUESTS) -> dict[str, float]:
    """One h2load run (after a short warm-up), with the server's CPU time per call."""
    h2load(c.target, data_file, workdir, max(1000, n // 10), c.headers)
    before = c.process.cpu_times()
    result = h2load(c.target, data_file, workdir, n, c.headers)
    after = c.process.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {**result, "cpu_us_per_call": cpu / n * 1e6}


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
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_call")
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
