"""The standard gRPC server series of each method, counted in plain numbers on the call path
and published to prometheus-client by `flush()` (the metrics sampler, once a second).

A Counter increment or a Histogram observation takes a lock and costs about a microsecond;
three of them on every CanUse cost more than everything else here together. Plain integers
cost a tenth of that, and a scrape sees them at most a second late. Everything runs on the
event loop's thread (the calls and the sampler alike), so no lock is needed.

The gRPC interceptor and the Connect adapter both count here, so a method's calls are one set
of series whatever protocol carried them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

import grpc

from service import metrics

# grpc_server_handling_seconds' bucket bounds, without +Inf (index len(BOUNDS) is +Inf).
BOUNDS = metrics.RPC_SECONDS_BUCKETS


class RpcSeries:
    """One method's calls: started, handled by code, durations by bucket, stream messages."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = 0
        self.sent = 0
        self.handled: dict[str, int] = {}
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.seconds = 0.0
        self._published: dict[str, Any] = {}
        self._children: tuple[Any, Any, Any] | None = None

    @classmethod
    def of(cls, method: str, streaming: bool) -> RpcSeries:
        service, _, name = method.lstrip("/").rpartition("/")
        return cls(("server_stream" if streaming else "unary", service, name))

    def start(self) -> float:
        self.started += 1
        return time.perf_counter()

    def done(self, code: grpc.StatusCode | None, started: float) -> None:
        self.record(code, time.perf_counter() - started)

    def record(self, code: grpc.StatusCode | None, elapsed: float) -> None:
        # bisect_left: a duration equal to a bound belongs to that bucket (le is "<=").
        self.buckets[bisect_left(BOUNDS, elapsed)] += 1
        self.seconds += elapsed
        name = "OK" if code is None else code.name
        self.handled[name] = self.handled.get(name, 0) + 1

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus series."""
        if self._children is None:
            self._children = (
                metrics.RPC_STARTED.labels(*self.labels),
                metrics.RPC_SECONDS.labels(*self.labels),
                metrics.RPC_MESSAGES_SENT.labels(*self.labels),
            )
        started, histogram, sent = self._children
        last = self._published
        _add(started, self.started - last.get("started", 0))
        _add(sent, self.sent - last.get("sent", 0))
        for code, count in self.handled.items():
            _add(metrics.RPC_HANDLED.labels(*self.labels, code), count - last.get(code, 0))
        # A Histogram child takes observations one by one; a second's worth is added to its
        # buckets and sum at once (prometheus-client keeps them as `_buckets` and `_sum`).
        previous = last.get("buckets", [0] * len(self.buckets))
        for i, count in enumerate(self.buckets):
            if count != previous[i]:
                histogram._buckets[i].inc(count - previous[i])
        if self.seconds != last.get("seconds", 0.0):
            histogram._sum.inc(self.seconds - last.get("seconds", 0.0))
        self._published = {
            "started": self.started,
            "sent": self.sent,
            **self.handled,
            "buckets": list(self.buckets),
            "seconds": self.seconds,
        }


def _add(counter: Any, amount: float) -> None:
    if amount:
        counter.inc(amount)


class _Uncounted(RpcSeries):
    """Where metrics are off: counts nothing."""

    def start(self) -> float:
        return time.perf_counter()

    def done(self, code: grpc.StatusCode | None, started: float) -> None:
        pass

    def record(self, code: grpc.StatusCode | None, elapsed: float) -> None:
        pass

    def flush(self) -> None:
        pass


UNCOUNTED: RpcSeries = _Uncounted(("", "", ""))
_SERIES: dict[tuple[str, bool], RpcSeries] = {}


def series_for(method: str, streaming: bool) -> RpcSeries:
    """The series of `method` ("/package.Service/Method"), made on its first call."""
    series = _SERIES.get((method, streaming))
    if series is None:
        series = _SERIES[(method, streaming)] = RpcSeries.of(method, streaming)
    return series


def uncounted(method: str, streaming: bool) -> RpcSeries:
    """`series_for` where metrics are off."""
    return UNCOUNTED


def flush_all() -> None:
    for series in list(_SERIES.values()):
        series.flush()
