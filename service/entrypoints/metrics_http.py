"""ENTITLEMENTS_METRICS_LISTEN: Prometheus `/metrics` for one process, or for all workers.

A single process serves prometheus-client's default registry from its own event loop. With
`--workers N` the supervisor sets PROMETHEUS_MULTIPROC_DIR before it starts them, each worker
writes its series there, and the supervisor alone serves one scrape of them all
(`MultiProcessCollector`), from one thread running an event loop of its own.

Either way it is prometheus-client's ASGI application on hypercorn with the bounds of
http_server.py (headers within ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS, 16 KiB of them), not
its thread-per-request WSGI server: an idle or half-sent request costs a socket and a few KiB,
never a thread, and is cut at the header deadline. A request body is never read.

Once a second `sample_forever` in each process publishes the RPC counts (rpc_metrics.py) and
sets the gauges, so a scrape sees values at most a second old and the hot paths touch no
Prometheus object.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, multiprocess

from service import metrics
from service.entrypoints import rpc_metrics
from service.entrypoints.http_server import (
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    App,
    HttpServer,
    Message,
    Receive,
    Scope,
    Send,
    lifespan,
    listen_socket,
    serve_asgi,
)

if TYPE_CHECKING:
    from service.adapters.cache import EntitlementCache
    from service.adapters.postgres.listener import ChangeListener
    from service.adapters.postgres.store import Store
    from service.application.change_feed import ChangeHub

log = logging.getLogger("entitlements.service")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 1.0


STOP_GRACE_SECONDS = 1.0


def metrics_app(registry: CollectorRegistry) -> App:
    """prometheus-client's ASGI app, answering lifespan, never reading a request body."""
    inner = make_asgi_app(registry)

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await inner(scope, no_body, send)
        else:
            await send({"type": "websocket.close"})

    return app


def _all_workers() -> CollectorRegistry:
    """The series every worker writes to PROMETHEUS_MULTIPROC_DIR, as one registry."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def start_metrics_endpoint(
    listen: str, header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS
) -> HttpServer:
    """Serve /metrics on `listen` (port 0: a free one) in the running event loop."""
    sock = listen_socket(listen, "ENTITLEMENTS_METRICS_LISTEN", in_use=True)
    host = listen.rpartition(":")[0]
    app = metrics_app(REGISTRY)
    server = serve_asgi(app, sock, header_timeout=header_timeout, grace=STOP_GRACE_SECONDS, log=log)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, server.port)
    return server


@dataclass
class MetricsThread:
    """/metrics of all workers, for the --workers supervisor (which has no event loop): one
    thread running its own loop, serving as start_metrics_endpoint does."""

    port: int
    _thread: threading.Thread
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event

    @classmethod
    def start(
        cls, listen: str, header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    ) -> MetricsThread:
        # Bound here, so a held port or a bad address is the caller's error (exit 4 / 2).
        sock = listen_socket(listen, "ENTITLEMENTS_METRICS_LISTEN", in_use=True)
        port = int(sock.getsockname()[1])
        app = metrics_app(_all_workers())
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        async def run() -> None:
            server = serve_asgi(
                app, sock, header_timeout=header_timeout, grace=STOP_GRACE_SECONDS, log=log
            )
            await stop.wait()
            await server.stop(STOP_GRACE_SECONDS)

        thread = threading.Thread(
            target=loop.run_until_complete, args=(run(),), name="metrics", daemon=True
        )
        thread.start()
        host = listen.rpartition(":")[0]
        log.info("Prometheus metrics on http://%s:%d/metrics (all workers)", host, port)
        return cls(port, thread, loop, stop)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges from the shared scrape (its counters stay)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@dataclass
class MetricSources:
    """What one replica's gauges are read from, and the cache's counts already published."""

    hub: ChangeHub
    store: Store
    listener: ChangeListener
    cache: EntitlementCache | None = None
    _hits: int = 0
    _misses: int = 0

    def sample(self) -> None:
        rpc_metrics.flush_all()
        cache = self.cache
        if cache is not None:
            metrics.CACHE_SUBJECTS.set(len(cache))
            metrics.CACHE_LIVE.set(1 if cache.live else 0)
            # The cache counts in plain integers (CanUse's path); published here as deltas.
            hits, misses = cache.hits, cache.misses
            metrics.CACHE_HITS.inc(hits - self._hits)
            metrics.CACHE_MISSES.inc(misses - self._misses)
            self._hits, self._misses = hits, misses
        metrics.WATCH_STREAMS.set(self.hub.streams)
        metrics.WATCH_LAG.set(self.hub.lag_ms() / 1000)
        metrics.LISTENER_CONNECTED.set(1 if self.listener.live else 0)
        pool = self.store.pool_stats()
        metrics.POOL_IN_USE.set(pool.in_use)
        metrics.POOL_OPEN.set(pool.open)
        metrics.POOL_MAX.set(pool.max)


async def sample_forever(sources: MetricSources, seconds: float = SAMPLE_SECONDS) -> None:
    while True:
        sources.sample()
        await asyncio.sleep(seconds)
