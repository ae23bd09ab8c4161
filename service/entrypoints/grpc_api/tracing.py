"""Tracing of the service's RPCs and their SQL, with OpenTelemetry's maintained grpc and
asyncpg instrumentations (only when tracing is on: entitlements_common/tracing.py).

Every BillingSyncService call gets a span, joined to the caller's trace (the gateway's).
An EntitlementService call gets one only when its caller sent a trace context: CanUse is on
every caller's hot path, and a span per untraced read would cost more than the read; a caller
that traces sees its reads in its own traces. Health checks get none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from service.entrypoints.grpc_api.interceptors import ENTITLEMENT_PREFIX

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def should_trace(details: grpc.HandlerCallDetails, context_fields: frozenset[str]) -> bool:
    """Whether a call gets a server span: not a health check, and a read only when it carries
    one of the propagator's fields (`traceparent` for W3C)."""
    method = details.method
    if method.startswith(HEALTH_PREFIX):
        return False
    if not method.startswith(ENTITLEMENT_PREFIX):
        return True
    return any(key in context_fields for key, _ in details.invocation_metadata or ())


def server_interceptor(provider: TracerProvider) -> aio.ServerInterceptor:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.propagate import get_global_textmap

    # Trace context, not baggage alone: baggage without a parent starts no trace of ours.
    context_fields = frozenset(get_global_textmap().fields) - {"baggage"}

    def traced(details: Any) -> bool:
        return should_trace(details, context_fields)

    interceptor: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=traced
    )
    return interceptor


class SqlTracing:
    """asyncpg's instrumentation, on for as long as a traced server runs (it patches asyncpg's
    Connection for the whole process, so it is turned off again at stop)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        self._instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        if not self._instrumentor.is_instrumented_by_opentelemetry:
            self._instrumentor.instrument(tracer_provider=provider)

    def stop(self) -> None:
        if self._instrumentor.is_instrumented_by_opentelemetry:
            self._instrumentor.uninstrument()
