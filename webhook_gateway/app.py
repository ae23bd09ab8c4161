"""The aiohttp app: verify the Svix signature over the raw body, forward, answer by SPEC §5.

A 2xx is sent only after the service committed; a dependency failure is a 503 with
Retry-After so Svix retries; bad input is a 4xx whatever the bytes; secrets never reach a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from entitlements_common.refusals import RefusalLog
from webhook_gateway import allocator
from webhook_gateway.body import BodyRefused, discard_buffered, read_body
from webhook_gateway.budget import BodyBudget
from webhook_gateway.config import GatewaySettings
from webhook_gateway.forwarding import DeliveryForwarder, Forwarder, ForwardFailed, ForwardResult
from webhook_gateway.metrics import GatewayMetrics
from webhook_gateway.server_log import ParserRefusals, server_logger
from webhook_gateway.verification import HEADER_NAMES, VerificationFailed, Verifier

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("entitlements.gateway")

WEBHOOK_PATH = "/api/webhooks/clerk-billing"
WEBHOOK_ALIAS = "/webhooks/clerk"
CONFIG_ERROR = "Server config error"

SETTINGS = web.AppKey("settings", GatewaySettings)
METRICS = web.AppKey("metrics", GatewayMetrics)
VERIFIER = web.AppKey("verifier", Verifier)
FORWARDER = web.AppKey("forwarder", DeliveryForwarder)
BUDGET = web.AppKey("budget", BodyBudget)
REFUSALS = web.AppKey("refusals", RefusalLog)

# aiohttp's own limits (passed to web.run_app / AppRunner): request line and each header
# field at most 8 KiB, at most 64 header fields (Svix sends about a dozen, proxies add some),
# at most 64 KiB buffered per connection before reading pauses (the reader keeps up to twice
# that), and no request decompression (Svix does not compress; a compressed body cannot
# become larger than what was reserved for it).
SERVER_OPTIONS: dict[str, Any] = {
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
    "read_bufsize": 16 * 1024,
    "auto_decompress": False,
}

_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


def _answer(
    request: web.Request, status: int, outcome: str, payload: dict[str, str]
) -> web.Response:
    request.app[METRICS].deliveries.labels(outcome=outcome, status=str(status)).inc()
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(request.app[SETTINGS].retry_after_seconds)
    return web.json_response(payload, status=status, headers=headers)


MAX_TYPE_CHARS = 200


def _event_type(body: bytes) -> str:
    """The envelope's `type`, or "" when there is none or the body cannot be read (too deep,
    not JSON, not an object): the service stores such a delivery UNPARSEABLE all the same.
    Cut and made valid UTF-8 (no lone surrogates), as it goes into a gRPC string and a log."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    event_type = envelope.get("type") if isinstance(envelope, dict) else None
    if not isinstance(event_type, str):
        return ""
    cleaned = event_type[:MAX_TYPE_CHARS].encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() else "?" for c in cleaned)


async def handle_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.configured:
        missing = [] if settings.signing_secrets else ["CLERK_WEBHOOK_SIGNING_SECRET"]
        if settings.sync_secret is None:
            missing.append("BILLING_WEBHOOK_SYNC_SECRET")
        log.error("Error processing webhook: %s not set", " and ".join(missing))
        return _answer(request, 500, "config_error", {"error": CONFIG_ERROR})

    reservation = request.app[BUDGET].reservation()
    try:
        try:
            async with asyncio.timeout(settings.body_timeout_seconds):
                body = await read_body(request, settings.max_body_bytes, reservation)
        except TimeoutError:
            return _refuse(request, "slow_body", 408, "body not received in time", close=True)
        except BodyRefused as exc:
            return _refuse(request, exc.reason, exc.status, str(exc), close=True)
        return await _verify_and_forward(request, body)
    finally:
        reservation.release()


def _refuse(
    request: web.Request, reason: str, status: int, message: str, close: bool = False
) -> web.Response:
    """A request turned away: counted exactly, logged as a rate-limited summary."""
    request.app[METRICS].verification_failures.labels(reason=reason).inc()
    request.app[REFUSALS].refused(reason, message)
    outcome = "unavailable" if status == 503 else "rejected"
    response = _answer(request, status, outcome, {"error": message})
    if close:
        discard_buffered(request)
        response.force_close()  # the rest of an unread body is not drained
    return response


async def _verify_and_forward(request: web.Request, body: bytes) -> web.Response:
    metrics = request.app[METRICS]
    headers = {name: request.headers.getall(name, []) for name in HEADER_NAMES}
    try:
        verified = request.app[VERIFIER].verify(body, headers)
    except VerificationFailed as exc:
        return _refuse(request, exc.reason, 400, str(exc))

    # A verified delivery is always forwarded and stored, whatever it holds (UNPARSEABLE when
    # the service cannot read it, kept for a replay after a fix).
    event_type = _event_type(body)
    log.info("[Webhook] Received: %s", event_type or "(no type)")

    started = time.perf_counter()
    try:
        result = await request.app[FORWARDER].forward(
            verified.event_id, event_type, body, verified.signed_at_seconds
        )
    except ForwardFailed as exc:
        return _forward_failed(request, verified.event_id, exc)
    finally:
        metrics.forward_seconds.observe(time.perf_counter() - started)
    _log_result(event_type, result)
    return _answer(request, 200, result.outcome, {"outcome": result.outcome})


def _forward_failed(request: web.Request, event_id: str, exc: ForwardFailed) -> web.Response:
    code = exc.code
    if code is grpc.StatusCode.UNAUTHENTICATED:
        log.error(
            "Error processing %s: the entitlement service rejected our "
            "BILLING_WEBHOOK_SYNC_SECRET — the gateway's and the service's secrets differ",
            event_id,
        )
        return _answer(request, 500, "config_error", {"error": CONFIG_ERROR})
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        log.error("Error processing %s: the entitlement service has no sync secret", event_id)
        return _answer(request, 500, "config_error", {"error": CONFIG_ERROR})
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        log.warning("Error processing %s: refused by the service: %s", event_id, exc.details)
        return _answer(request, 400, "rejected", {"error": "delivery refused as invalid"})
    level = logging.WARNING if code in _RETRYABLE_CODES else logging.ERROR
    log.log(level, "Error processing %s: service %s; answering 503", event_id, code.name)
    return _answer(request, 503, "unavailable", {"error": "temporarily unavailable, retry"})


def _log_result(event_type: str, result: ForwardResult) -> None:
    if result.outcome != "APPLIED" or not result.subject:
        return
    if result.plan and result.plan != result.previous_plan:
        log.info("[Webhook] Updating plan for %s → %s", result.subject, result.plan)
    if event_type == "subscriptionItem.canceled":
        log.info("[Webhook] Subscription cancelled for %s", result.subject)


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.configured:
        return web.json_response({"status": "not ready", "error": CONFIG_ERROR}, status=503)
    if not await request.app[FORWARDER].service_ready():
        return web.json_response(
            {"status": "not ready", "error": "entitlement service unreachable"}, status=503
        )
    return web.json_response({"status": "ready"})


async def handle_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# OpenTelemetry's own settings of paths its aiohttp middleware leaves alone (regexes, commas).
EXCLUDED_URLS_VARS = ("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
UNTRACED_PATHS = ("/healthz$", "/readyz$", "/metrics$")


@contextmanager
def _untraced_probes() -> Iterator[None]:
    """Probes and scrapes every few seconds are not traces anyone wants. The middleware reads
    the paths to leave alone from its environment variable once, when instrumented, and has no
    argument for them: unless the operator set their own, ours are there for that moment only,
    and the environment is left as it was."""
    if any(os.environ.get(name) for name in EXCLUDED_URLS_VARS):
        yield
        return
    os.environ[EXCLUDED_URLS_VARS[0]] = ",".join(UNTRACED_PATHS)
    try:
        yield
    finally:
        del os.environ[EXCLUDED_URLS_VARS[0]]


def create_app(
    settings: GatewaySettings,
    tracer_provider: TracerProvider | None = None,
    forwarder: DeliveryForwarder | None = None,
) -> web.Application:
    """The gateway; with `tracer_provider`, each request is traced through the forwarded call
    (OpenTelemetry's aiohttp-server middleware and gRPC client interceptors). `forwarder`:
    where verified deliveries go (default: BillingSyncService at `settings.target`)."""
    client_interceptors: list[grpc.aio.ClientInterceptor] = []
    instrumentor = None
    if tracer_provider is not None:
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        # The instrumentor's way: web.Application, made after it, carries its middleware
        # (undone when this app is cleaned up).
        instrumentor = AioHttpServerInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            with _untraced_probes():
                instrumentor.instrument(tracer_provider=tracer_provider)
        client_interceptors = aio_client_interceptors(tracer_provider)  # type: ignore[no-untyped-call]
    # client_max_size also caps anything aiohttp itself would read into memory.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics.create()
    app[VERIFIER] = Verifier(settings.signing_secrets)
    app[BUDGET] = BodyBudget(settings.max_inflight_bytes)
    app[REFUSALS] = RefusalLog(log)

    async def forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
        app[FORWARDER] = forwarder or Forwarder(
            settings.target,
            settings.sync_secret,
            settings.forward_timeout_seconds,
            settings.tls,
            client_interceptors,
        )
        parser_refusals = ParserRefusals(app[METRICS], app[REFUSALS])
        server_logger.addFilter(parser_refusals)
        trimmer = asyncio.create_task(allocator.trim_when_settled(app[BUDGET].settled))
        yield
        trimmer.cancel()
        server_logger.removeFilter(parser_refusals)
        app[REFUSALS].flush()
        await app[FORWARDER].close()
        if instrumentor is not None and instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()

    app.cleanup_ctx.append(forwarder_ctx)
    for path in (WEBHOOK_PATH, WEBHOOK_ALIAS):
        app.router.add_post(path, handle_webhook)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app
