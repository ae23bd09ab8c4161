"""What metrics and tracing add to each call, measured in-process and exactly: the service's
own interceptors as the server runs them (stages of one Dispatch lookup, tracing's as an
interceptor around it) and the handler they return, around a handler that does nothing, for
a CanUse call that carries no trace context. Shared-core noise moves whole-server figures by
more than this; it barely moves a tight loop of one process, so this is the cost as such, and
the side-by-side runs in canuse.py show it within the noise of a real server."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import grpc
from grpc import aio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from entitlements_common.otel_sdk import new_tracer_provider
from service.entrypoints.grpc_api import tracing
from service.entrypoints.grpc_api.dispatch import Dispatch, Stage
from service.entrypoints.grpc_api.interceptors import (
    BillingAuthInterceptor,
    ErrorInterceptor,
)
from service.entrypoints.grpc_api.receiving import Receiving

CALLS = 100_000
REPEATS = 5


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _Context:
    def code(self) -> grpc.StatusCode | None:
        return None

    async def read(self) -> Any:
        """The call's one request message (the server receives it itself: receiving.py)."""
        return b""


DETAILS = _Details(
    "/entitlements.v1.EntitlementService/CanUse",
    (("user-agent", "h2load nghttp2/1.52.0"), ("te", "trailers")),
)


async def _answer(request: Any, context: Any) -> int:
    return 1


def _chain(
    stages: list[Stage], interceptors: list[aio.ServerInterceptor]
) -> Callable[[Any], Awaitable[Any]]:
    """The lookup as the server runs it: our interceptors as stages of one Dispatch, the
    others (tracing's) as grpc.aio's chain around it."""
    dispatch = Dispatch(stages)
    service, _, method = DETAILS.method.lstrip("/").rpartition("/")
    handler: Any = grpc.unary_unary_rpc_method_handler(_answer)
    dispatch.add_registered_method_handlers(service, {method: handler})

    async def registered(details: Any) -> Any:
        return dispatch.service(details)

    step: Callable[[Any], Awaitable[Any]] = registered
    for interceptor in reversed(interceptors):

        def bind(
            i: aio.ServerInterceptor, nxt: Callable[[Any], Awaitable[Any]]
        ) -> Callable[[Any], Awaitable[Any]]:
            async def run(details: Any) -> Any:
                return await i.intercept_service(nxt, details)

            return run

        step = bind(interceptor, step)
    return step


async def _per_call_us(
    stages: list[Stage], interceptors: list[aio.ServerInterceptor] | None = None
) -> float:
    chain, context = _chain(stages, interceptors or []), _Context()
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(CALLS):
            handler = await chain(DETAILS)
            # Registered request-streaming (receiving.py reads the one message within bounds).
            await (handler.unary_unary or handler.stream_unary)(None, context)
        samples.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(samples)


async def _measure() -> dict[str, float]:
    provider = new_tracer_provider("bench", InMemorySpanExporter(), batch=False, env={})
    secret = "x" * 32
    bare = await _per_call_us([ErrorInterceptor(Receiving(128)), BillingAuthInterceptor(secret)])
    metrics = await _per_call_us(
        [ErrorInterceptor(Receiving(128), metrics=True), BillingAuthInterceptor(secret)]
    )
    both = await _per_call_us(
        [ErrorInterceptor(Receiving(128), metrics=True), BillingAuthInterceptor(secret)],
        [tracing.server_interceptor(provider)],
    )
    provider.shutdown()
    return {
        "bare_us": bare,
        "metrics_us": metrics,
        "metrics_and_tracing_us": both,
        "added_by_metrics_us": metrics - bare,
        "added_by_metrics_and_tracing_us": both - bare,
    }


def measure(server_cpu_us_per_call: float) -> dict[str, float]:
    """The added cost per call, and its share of what a cached CanUse costs the server."""
    result = asyncio.run(_measure())
    added = result["added_by_metrics_and_tracing_us"]
    return {**result, "share_of_cached_canuse_cpu": added / server_cpu_us_per_call}
