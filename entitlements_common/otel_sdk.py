"""The OpenTelemetry SDK parts of tracing (imported only when tracing is on: see tracing.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import sampling as sdk_sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


def otlp_exporter(protocol: str) -> SpanExporter:
    """The OTLP span exporter for `protocol` (it reads its endpoint, headers, timeout and TLS
    settings from the OTEL_EXPORTER_OTLP_* variables itself)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def new_tracer_provider(
    service_name: str,
    exporter: SpanExporter,
    *,
    batch: bool = True,
    env: Mapping[str, str] | None = None,
) -> TracerProvider:
    """A provider exporting to `exporter` (batched; `batch=False` exports each span as it
    ends, for tests), named `service_name` unless OTEL_SERVICE_NAME says otherwise."""
    env = os.environ if env is None else env
    named = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    # The SDK's own reading of OTEL_TRACES_SAMPLER / _ARG (what TracerProvider() would use).
    sampler = DropOrphanClientSpans(sdk_sampling._get_from_env_or_default())
    provider = TracerProvider(resource=Resource.create(named), sampler=sampler)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


class DropOrphanClientSpans(Sampler):
    """Defers to `delegate`, except that a CLIENT span (a SQL statement, an outgoing call)
    with no parent span is dropped: it is background work, not part of any request."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"DropOrphanClientSpans{{{self._delegate.get_description()}}}"
