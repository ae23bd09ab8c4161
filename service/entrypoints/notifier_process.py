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

import logging
from dataclasses import replace

from entitlements_common.settings import ConfigError
from service.adapters.postgres.store import Store
from service.application.ports import SystemClock
from service.config import ServiceSettings, load_catalog
from service.entrypoints.background import change_listener
from service.entrypoints.bootstrap import wire
from service.entrypoints.metrics_http import start_metrics_endpoint
from service.entrypoints.notifier_task import notifier_jobs
from service.entrypoints.supervision import Supervisor, until_stopped

log = logging.getLogger("entitlements.notifier")


async def serve_notifier(settings: ServiceSettings) -> None:
    """Notify until SIGTERM, SIGINT or SIGHUP."""
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
        supervisor.start("change listener", change_listener(settings, store, wired.hub).run)
        for name, job in notifier_jobs(settings, store, wired.app):
            supervisor.start(name, job)
        if settings.metrics_listen is not None:
            metrics = start_metrics_endpoint(
                settings.metrics_listen, settings.http_header_timeout_seconds
            )
        log.info("entitlements-service notify: following the change log")
        await until_stopped()
    finally:
        await supervisor.stop()
        if metrics is not None:
            await metrics.stop(1.0)
        await store.close()
    log.info("stopped")
