"""The grpc.aio server of `entitlements-service` (main.py is its command line), its health
reporting and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2_grpc as reflection_grpc

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from entitlements_common.settings import ConfigError
from entitlements_common.tracing import tracer_provider_from_env
from service.adapters.cache import EntitlementCache
from service.adapters.postgres.embedded import (
    EmbeddedPostgres,
    start_embedded_postgres,
)
from service.adapters.postgres.store import Store
from service.application.app import Application
from service.application.ports import (
    Clock,
    StoreUnavailable,
    SystemClock,
)
from service.config import ServiceSettings, load_catalog
from service.domain.catalog import Catalog
from service.entrypoints.background import background_jobs
from service.entrypoints.bootstrap import Wired, wire
from service.entrypoints.connect_api import HttpServer, start_configured_http
from service.entrypoints.garbage_collection import tune_garbage_collection
from service.entrypoints.grpc_api import tracing
from service.entrypoints.grpc_api.dispatch import Dispatch
from service.entrypoints.grpc_api.interceptors import (
    BillingAuthInterceptor,
    ErrorInterceptor,
    ReadAuthInterceptor,
)
from service.entrypoints.grpc_api.receiving import Receiving
from service.entrypoints.launch import (
    PortInUse,
    port_in_use,
)
from service.entrypoints.message_limits import LARGEST_MESSAGE_BYTES
from service.entrypoints.metrics_http import (
    STOP_GRACE_SECONDS,
    start_metrics_endpoint,
)
from service.entrypoints.supervision import Supervisor, until_stopped

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("entitlements.service")

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["EntitlementService"].full_name,
    sync_pb.DESCRIPTOR.services_by_name["BillingSyncService"].full_name,
    usage_pb.DESCRIPTOR.services_by_name["UsageService"].full_name,
)
# A health name SERVING for as long as the process serves, whatever the database does: the
# liveness probe's (a database outage must take replicas out of rotation, not restart them).
LIVENESS_SERVICE = "liveness"


@dataclass
class RunningServer:
    """A started server; `stop()` drains it gracefully."""

    server: aio.Server
    port: int
    store: Store
    app: Application
    health: health.aio.HealthServicer
    grace_seconds: float
    cache: EntitlementCache | None = None
    http: HttpServer | None = None  # ENTITLEMENTS_HTTP_LISTEN
    metrics: HttpServer | None = None  # ENTITLEMENTS_METRICS_LISTEN
    sql_tracing: tracing.SqlTracing | None = None
    background: Supervisor = field(default_factory=Supervisor)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self) -> None:
        await self.set_serving(False)
        await self.background.stop()
        if self.http is not None:
            await self.http.stop(self.grace_seconds)
        await self.server.stop(self.grace_seconds)
        await self.store.close()
        if self.metrics is not None:
            await self.metrics.stop(STOP_GRACE_SECONDS)
        if self.sql_tracing is not None:
            self.sql_tracing.stop()


async def _stop_partial(running: RunningServer) -> None:
    """Stop the listeners of a server whose start failed half-way; the caller owns the store."""
    if running.http is not None:
        await running.http.stop(0)
    await running.server.stop(0)
    if running.metrics is not None:
        await running.metrics.stop(0)
    if running.sql_tracing is not None:
        running.sql_tracing.stop()


# Keepalive (documented in the README): the server pings an idle connection every 30 s and
# drops it when no answer comes within 10 s; clients may ping every 10 s even without calls.
# Connections are closed after `max_connection_age_seconds` (+ 5 min for calls in flight),
# so clients spread over new replicas; a Watch stream then resumes where it was.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
MIN_CLIENT_PING_INTERVAL_MS = 5_000
CONNECTION_AGE_GRACE_MS = 300_000
STREAM_WINDOW_BYTES = 8 * 1024


def max_streams_per_connection(settings: ServiceSettings) -> int:
    """Streams one connection may have open: its Watch share and 100 calls besides."""
    return settings.watch_max_streams_per_peer + 100


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", LARGEST_MESSAGE_BYTES),
        # What one connection may hold (README "Resource bounds"): a client's share of Watch
        # streams and 100 calls, each stream with a fixed 8 KiB window until its request is
        # read (BDP probing would grow the windows, letting unrequested data in); grpc opens a
        # window to the announced size only while a message is being received (receiving.py
        # bounds how many at once). A client queues its calls beyond the limit (no error).
        ("grpc.max_concurrent_streams", max_streams_per_connection(settings)),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
        # --workers: every worker binds the same port; a single process never shares its port.
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_connection_age_ms", settings.max_connection_age_seconds * 1000),
        ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
    ]


async def start_server(
    settings: ServiceSettings,
    catalog: Catalog,
    store: Store,
    clock: Clock | None = None,
    tracer_provider: TracerProvider | None = None,
) -> RunningServer:
    """The composition root: wire the application over its adapters (bootstrap.py), start the
    gRPC server on `settings.listen` (port 0 picks a free port) and the HTTP listeners, then
    the background tasks, supervised (background.py); with `tracer_provider`, RPCs and their
    SQL are traced."""
    clock = clock or SystemClock()
    wired = wire(settings, catalog, store, clock)
    server, health_servicer = _grpc_server(settings, wired, tracer_provider)
    try:
        if settings.tls is not None:
            port = server.add_secure_port(settings.listen, settings.tls.credentials())
        else:
            port = server.add_insecure_port(settings.listen)
    except RuntimeError:  # grpc cannot bind: taken since main() checked, or not an address here
        if not settings.reuse_port and port_in_use(settings.listen):
            raise PortInUse(settings.listen) from None
        port = 0
    if port == 0:
        raise ConfigError(f"ENTITLEMENTS_LISTEN={settings.listen}: cannot listen there")
    await server.start()
    running = RunningServer(
        server, port, store, wired.app, health_servicer, settings.grace_seconds, wired.cache
    )
    try:
        if tracer_provider is not None:
            running.sql_tracing = tracing.SqlTracing(tracer_provider)
        if settings.metrics_listen is not None:
            running.metrics = start_metrics_endpoint(
                settings.metrics_listen, settings.http_header_timeout_seconds
            )
        if settings.http_listen is not None:
            # The same servicers, in this process and loop: Connect, gRPC-Web (connect_api.py).
            running.http = await start_configured_http(settings, wired.entitlements, wired.usage)
    except BaseException:
        # A listener that cannot start (say its port is taken) stops what did, here, in this
        # loop: a started grpc.aio server left to the garbage collector outlives its loop.
        await _stop_partial(running)
        raise
    await running.set_serving(await store.ping())
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    with contextlib.suppress(StoreUnavailable):
        for schema in await store.drop_abandoned_scratch_schemas():
            log.info("dropped scratch schema %s left by an interrupted verify", schema)
    for name, job in background_jobs(settings, store, wired, running.set_serving):
        running.background.start(name, job)
    return running


def _grpc_server(
    settings: ServiceSettings, wired: Wired, tracer_provider: TracerProvider | None
) -> tuple[aio.Server, health.aio.HealthServicer]:
    """The gRPC server with the three services, health and reflection (not bound yet)."""
    # Our own interceptors run as stages of one synchronous lookup (dispatch.py), not as
    # grpc.aio's chain of coroutines: the read-token one only when configured; the error one
    # counts the calls' metrics and receives requests within bounds. Only tracing's is an
    # interceptor, and only when on.
    dispatch = Dispatch(
        [
            ErrorInterceptor(Receiving(settings.max_receiving), metrics=settings.metrics),
            BillingAuthInterceptor(settings.sync_secret),
            *([ReadAuthInterceptor(list(settings.read_tokens))] if settings.read_tokens else []),
        ]
    )
    server = aio.server(
        interceptors=[tracing.server_interceptor(tracer_provider)] if tracer_provider else [],
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    pb_grpc.add_EntitlementServiceServicer_to_server(wired.entitlements, dispatch)  # type: ignore[arg-type]
    sync_grpc.add_BillingSyncServiceServicer_to_server(wired.billing, dispatch)  # type: ignore[arg-type]
    usage_grpc.add_UsageServiceServicer_to_server(wired.usage, dispatch)  # type: ignore[arg-type]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, dispatch)  # type: ignore[arg-type]
    # Reflection through the dispatch too: a method registered on the server itself makes
    # grpc.aio wait for its calls apart, on a future of its own, beside every other call.
    reflection_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        reflection.aio.ReflectionServicer(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        ),
        dispatch,
    )
    server.add_generic_rpc_handlers((dispatch,))
    return server, health_servicer


async def serve(settings: ServiceSettings) -> None:
    catalog = load_catalog(settings.catalog_path)
    for warning in catalog.warnings:  # allowed, but probably not meant
        log.warning("catalog: %s", warning)
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        embedded = await asyncio.to_thread(start_embedded_postgres, settings.data_dir)
        dsn = embedded.uri
    provider = tracer_provider_from_env("entitlements-service") if settings.tracing else None
    try:
        store = await Store.open(dsn, migrate_schema=settings.migrate_on_start)
        running = await start_server(settings, catalog, store, tracer_provider=provider)
        host = settings.listen.rsplit(":", 1)[0]
        log.info(
            "entitlements-service listening on %s:%d (catalog: %s plans, default %r)%s",
            host,
            running.port,
            len(catalog.plans),
            catalog.default_plan_name,
            ""
            if settings.sync_secret
            else "; BillingSyncService disabled: no BILLING_WEBHOOK_SYNC_SECRET",
        )
        if running.http is not None:
            log.info(
                "EntitlementService over HTTP (Connect, gRPC-Web) on %s:%d",
                settings.http_listen.rsplit(":", 1)[0] if settings.http_listen else "",
                running.http.port,
            )
        if settings.clerk is None:
            log.info("reconciliation with Clerk off: no CLERK_SECRET_KEY")
        elif settings.reconcile_interval_seconds > 0:
            log.info(
                "reconciling with Clerk every %.0f s (%s)",
                settings.reconcile_interval_seconds,
                settings.clerk.base_url,
            )
        tune_garbage_collection()
        await until_stopped()
        log.info("shutting down: NOT_SERVING, draining for up to %.0f s", settings.grace_seconds)
        await running.stop()
    finally:
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)  # exports the spans still queued
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    log.info("stopped")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # chatty at INFO
