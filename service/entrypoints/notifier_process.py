"""`entitlements-service notify`: change notifications as a process of their own.

The same notifier and delivery workers the service runs when ENTITLEMENTS_NOTIFY_URL is set
(notifier_task.py), without the gRPC server: run it beside replicas that leave the URL unset,
so that resolving, signing and POSTing changes never takes CPU from reads and ingest, and give
it a smaller CPU share than the service (a lower priority, its own container limits). It is
woken by the change listener (PostgreSQL NOTIFY) like a replica, and it may run beside
replicas that notify themselves: one notifier scans at a time and a delivery is leased to one
sender (notifications.py). It keeps no cache: each change is read from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import replace

from entitlements_common.settings import ConfigError
from service.adapters.postgres.listener import ChangeListener
from service.adapters.postgres.store import Store
from service.application.ports import SystemClock
from service.config import ServiceSettings, load_catalog
from service.entrypoints.bootstrap import wire
from service.entrypoints.metrics_http import start_metrics_endpoint
from service.entrypoints.notifier_task import notifier_jobs
from service.entrypoints.supervision import Supervisor

log = logging.getLogger("entitlements.notifier")


async def serve_notifier(settings: ServiceSettings) -> None:
    """Notify until SIGTERM or SIGINT."""
    if settings.notify is None:
        raise ConfigError("ENTITLEMENTS_NOTIFY_URL is not set: `notify` would have nothing to do")
    dsn = settings.database_url
    if dsn is None:
        raise ConfigError("DATABASE_URL is not set: `notify` reads the service's database")
    catalog = load_catalog(settings.catalog_path)
    settings = replace(settings, cache_enabled=False)
    store = await Store.open(dsn, migrate_schema=settings.migrate_on_start)
    supervisor = Supervisor()
    metrics = None
    try:
        wired = wire(settings, catalog, store, SystemClock())
        hub = wired.hub
        listener = ChangeListener(
            settings.listen_database_url or store.dsn, hub.on_change, hub.on_live
        )
        supervisor.start("change listener", listener.run)
        for name, job in notifier_jobs(settings, store, wired.app):
            supervisor.start(name, job)
        if settings.metrics_listen is not None:
            metrics = start_metrics_endpoint(
                settings.metrics_listen, settings.http_header_timeout_seconds
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("entitlements-service notify: following the change log")
        await stop.wait()
    finally:
        await supervisor.stop()
        if metrics is not None:
            await metrics.stop(1.0)
        await store.close()
    log.info("stopped")
