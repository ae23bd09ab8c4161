"""Tracing: one trace from the gateway's request through the forwarded gRPC call to its SQL,
with OpenTelemetry's aiohttp-server, grpc and asyncpg instrumentations and an in-memory
exporter; untraced reads and background SQL make no spans; tracing off instruments nothing."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from grpc import aio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_common.otel_sdk import new_tracer_provider
from service.entrypoints.server import RunningServer
from tests.conftest import start_harness
from tests.support import SYNC_SECRET, Clock, load_fixture
from tests.support.stack import WEBHOOK_PATH, new_signing_secret, signed_headers
from webhook_gateway.app import create_app
from webhook_gateway.config import GatewaySettings

pytestmark = pytest.mark.integration

APPLY = "/entitlements.v1.BillingSyncService/ApplyBillingEvent"
CAN_USE = "/entitlements.v1.EntitlementService/CanUse"


@dataclass
class TracedStack:
    exporter: InMemorySpanExporter
    provider: TracerProvider
    service: RunningServer
    gateway_url: str
    target: str
    signing_secret: str

    def spans(self) -> list[ReadableSpan]:
        self.provider.force_flush()
        return list(self.exporter.get_finished_spans())


async def _stack(dsn: str, provider: TracerProvider | None) -> AsyncIterator[RunningServer]:
    async for harness in start_harness(dsn, Clock(), tracer_provider=provider):
        yield harness.running


@pytest.fixture
async def traced(database_url: str) -> AsyncIterator[TracedStack]:
    exporter = InMemorySpanExporter()
    provider = new_tracer_provider("entitlements-test", exporter, batch=False, env={})
    signing = new_signing_secret()
    async for service in _stack(database_url, provider):
        target = f"127.0.0.1:{service.port}"
        settings = GatewaySettings(
            host="127.0.0.1",
            port=0,
            target=target,
            signing_secrets=(signing,),
            sync_secret=SYNC_SECRET,
        )
        runner = web.AppRunner(create_app(settings, provider))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        stack = TracedStack(
            exporter, provider, service, f"http://127.0.0.1:{port}{WEBHOOK_PATH}", target, signing
        )
        try:
            yield stack
        finally:
            await runner.cleanup()
    provider.shutdown()


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.parent is not None
        and parent.context is not None
        and s.parent.span_id == parent.context.span_id
    ]


async def _deliver(stack: TracedStack) -> int:
    body = json.dumps(load_fixture("item_active_pro_month")).encode()
    headers = signed_headers(body, stack.signing_secret, "msg_" + secrets.token_hex(8))
    async with (
        aiohttp.ClientSession() as http,
        http.post(stack.gateway_url, data=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


async def test_one_trace_from_the_webhook_through_grpc_to_the_sql(traced: TracedStack) -> None:
    traced.exporter.clear()
    assert await _deliver(traced) == 200
    spans = traced.spans()
    roots = [s for s in spans if s.parent is None and s.kind is SpanKind.SERVER]
    webhook = [s for s in roots if WEBHOOK_PATH in s.name]
    assert len(webhook) == 1, [s.name for s in spans]
    trace_id = webhook[0].context.trace_id
    in_trace = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]

    (client,) = [s for s in _children(in_trace, webhook[0]) if s.kind is SpanKind.CLIENT]
    assert client.name == APPLY
    (server,) = [s for s in _children(in_trace, client) if s.kind is SpanKind.SERVER]
    assert server.name == APPLY
    assert server.resource.attributes["service.name"] == "entitlements-test"
    sql = _children(in_trace, server)
    statements = [str(s.attributes.get("db.statement", "")) for s in sql if s.attributes]
    assert sql and all(s.kind is SpanKind.CLIENT for s in sql)
    assert any("INSERT INTO deliveries" in q for q in statements), statements
    # Nothing else was exported: no root SQL span of the health ping, follower or listener.
    assert all(s.context.trace_id == trace_id for s in spans if s.context), [
        s.name for s in spans if s.context and s.context.trace_id != trace_id
    ]


async def test_probes_and_scrapes_of_the_gateway_make_no_trace(traced: TracedStack) -> None:
    base = traced.gateway_url.removesuffix(WEBHOOK_PATH)
    traced.exporter.clear()
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(base + path) as response:
                assert response.status == 200, path
    assert [s.name for s in traced.spans()] == []


async def test_reads_are_traced_only_for_a_caller_that_traces(traced: TracedStack) -> None:
    async with aio.insecure_channel(traced.target) as channel:
        stub = pb_grpc.EntitlementServiceStub(channel)
        request = pb.CanUseRequest(subject="user_trace_reads", feature="aiInsights")
        traced.exporter.clear()
        for _ in range(3):
            await stub.CanUse(request)
        assert [s.name for s in traced.spans() if s.name == CAN_USE] == []

        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        await stub.CanUse(request, metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),))
    (span,) = [s for s in traced.spans() if s.name == CAN_USE]
    assert span.context is not None and span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None and span.parent.span_id == int(parent_id, 16)


async def test_tracing_off_instruments_nothing(database_url: str) -> None:
    async for service in _stack(database_url, None):
        assert service.sql_tracing is None
        assert not hasattr(asyncpg.Connection.fetch, "__wrapped__")
