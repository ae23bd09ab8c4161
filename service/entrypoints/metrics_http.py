"""ENTITLEMENTS_METRICS_LISTEN: Prometheus `/metrics` for one process, or for all workers.

A single process serves prometheus-client's default registry. With `--workers N` the
supervisor sets PROMETHEUS_MULTIPROC_DIR before it starts them, each worker writes its series
there, and the supervisor alone serves one scrape of them all (`MultiProcessCollector`).

Once a second `sample_forever` in each process publishes the RPC counts (rpc_metrics.py) and
sets the gauges, so a scrape sees values at most a second old and the hot paths touch no
Prometheus object.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from threading import Thread
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from entitlements_common.settings import ConfigError
from service import metrics
from service.entrypoints import rpc_metrics
from service.entrypoints.launch import PortInUse

if TYPE_CHECKING:
    from service.adapters.cache import EntitlementCache
    from service.adapters.postgres.listener import ChangeListener
    from service.adapters.postgres.store import Store
    from service.application.change_feed import ChangeHub

log = logging.getLogger("entitlements.service")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 1.0


@dataclass
class MetricsEndpoint:
    server: WSGIServer
    thread: Thread
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_endpoint(listen: str, *, all_workers: bool = False) -> MetricsEndpoint:
    """Serve /metrics on `listen` (port 0: a free one) in a thread of its own; `all_workers`:
    the series the workers write to PROMETHEUS_MULTIPROC_DIR."""
    host, _, port = listen.rpartition(":")
    registry: CollectorRegistry = REGISTRY
    if all_workers:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        server, thread = start_http_server(int(port), host.strip("[]"), registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(listen) from None
        raise ConfigError(f"ENTITLEMENTS_METRICS_LISTEN={listen}: cannot listen there") from None
    bound = int(server.server_port)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
    return MetricsEndpoint(server, thread, bound)


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
