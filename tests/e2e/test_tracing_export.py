"""Tracing between real processes: with OTEL_EXPORTER_OTLP_ENDPOINT set, the gateway and the
service export over OTLP/HTTP (the SDK's real exporter), and a webhook's spans from both
processes form one trace; without it, nothing is sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support import load_fixture
from tests.support.stack import running_stack

pytestmark = pytest.mark.e2e


class Collector:
    """An OTLP/HTTP traces endpoint on a free port: keeps (service.name, span name, trace id,
    span id, parent span id) of every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes, bytes, bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    name = next(
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        for s in scope.spans:
                            collector.spans.append(
                                (name, s.name, s.trace_id, s.span_id, s.parent_span_id)
                            )
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


def test_a_webhook_is_one_trace_across_gateway_and_service(
    database_url: str, tmp_path: Path, collector: Collector
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_stack(database_url, tmp_path, otel, **otel) as stack:
        assert stack.send(load_fixture("item_active_pro_month")).status == 200
    # Both processes have stopped (SIGTERM): what they still held was exported as they did.
    spans = list(collector.spans)
    by_id = {span_id: (service, name, trace) for service, name, trace, span_id, _ in spans}
    (root,) = [s for s in spans if s[0] == "entitlements-gateway" and not s[4]]
    assert "/api/webhooks/clerk-billing" in root[1]
    trace = root[2]
    services = {s[0] for s in spans if s[2] == trace}
    assert services == {"entitlements-gateway", "entitlements-service"}
    # Every span of the service has its parent in the same trace: gateway → service → SQL.
    for service, _name, span_trace, _span_id, parent in spans:
        if service == "entitlements-service":
            assert span_trace == trace and parent in by_id, (service, _name)
    assert any(n.startswith("/entitlements.v1.BillingSyncService/") for _, n, *_ in spans)


def test_without_an_endpoint_nothing_is_exported(
    database_url: str, tmp_path: Path, collector: Collector
) -> None:
    # The collector listens, but nobody is told of it: tracing stays off.
    with running_stack(database_url, tmp_path, {"OTEL_BSP_SCHEDULE_DELAY": "100"}) as stack:
        assert stack.send(load_fixture("item_active_pro_month")).status == 200
        time.sleep(1)
    assert collector.spans == []
