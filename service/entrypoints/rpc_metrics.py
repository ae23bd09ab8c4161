"""The standard gRPC server series of one method, bound once (a labels() lookup per call would
cost more than the increment). The gRPC interceptor and the Connect adapter both count here, so
a method's calls are one set of series whatever protocol carried them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from service import metrics


@dataclass(frozen=True)
class RpcSeries:
    """One method's label children, bound once (a labels() lookup per call would cost more
    than the increment)."""

    started: Any
    seconds: Any
    sent: Any
    labels: tuple[str, str, str]
    handled: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, streaming: bool) -> RpcSeries:
        service, _, name = method.lstrip("/").rpartition("/")
        labels = ("server_stream" if streaming else "unary", service, name)
        return cls(
            metrics.RPC_STARTED.labels(*labels),
            metrics.RPC_SECONDS.labels(*labels),
            metrics.RPC_MESSAGES_SENT.labels(*labels),
            labels,
        )

    def done(self, code: grpc.StatusCode | None, started: float) -> None:
        self.seconds.observe(time.perf_counter() - started)
        name = "OK" if code is None else code.name
        child = self.handled.get(name)
        if child is None:
            child = self.handled[name] = metrics.RPC_HANDLED.labels(*self.labels, name)
        child.inc()


class _Uncounted:
    """Stands for a series where metrics are off: every method does nothing."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class UncountedSeries(RpcSeries):
    def done(self, code: grpc.StatusCode | None, started: float) -> None:
        pass


UNCOUNTED = UncountedSeries(_Uncounted(), _Uncounted(), _Uncounted(), ("", "", ""))


def uncounted(method: str, streaming: bool) -> RpcSeries:
    """`series_for` when metrics are off."""
    return UNCOUNTED


_SERIES: dict[tuple[str, bool], RpcSeries] = {}


def series_for(method: str, streaming: bool) -> RpcSeries:
    """The series of `method` ("/package.Service/Method"), made on its first call."""
    series = _SERIES.get((method, streaming))
    if series is None:
        series = _SERIES[(method, streaming)] = RpcSeries.of(method, streaming)
    return series
