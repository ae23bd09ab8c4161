"""A replica's background tasks, each under supervision (supervision.py): what keeps the
cache and the Watch streams fed (the change listener, the follower, heartbeats), what reports
health and metrics, and the periodic jobs (housekeeping, the reconciliation schedule)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

from service.adapters.postgres.listener import ChangeListener
from service.adapters.postgres.store import Store
from service.application.change_feed import ChangeHub
from service.application.housekeeping import run_housekeeping
from service.application.reconcile import run_reconcile_schedule
from service.config import ServiceSettings
from service.domain.resolution import Entitlements
from service.entrypoints.bootstrap import Wired
from service.entrypoints.memory_release import release_forever
from service.entrypoints.metrics_http import MetricSources, sample_forever
from service.entrypoints.notifier_task import notifier_jobs
from service.entrypoints.supervision import Job

log = logging.getLogger(__name__)


async def watch_database(
    store: Store, set_serving: Callable[[bool], Awaitable[None]], interval: float
) -> None:
    """Report NOT_SERVING while the database is unreachable."""
    serving: bool | None = None
    while True:
        ok = await store.ping()
        if ok != serving:
            await set_serving(ok)
            if serving is not None:
                (log.info if ok else log.warning)(
                    "database %s", "reachable again: SERVING" if ok else "unreachable: NOT_SERVING"
                )
            serving = ok
        await asyncio.sleep(interval)


def change_listener(settings: ServiceSettings, store: Store, hub: ChangeHub) -> ChangeListener:
    """The LISTEN connection that wakes `hub` on every commit (a replica's, and the notifier
    process's)."""
    return ChangeListener(settings.listen_database_url or store.dsn, hub.on_change, hub.on_live)


def background_jobs(
    settings: ServiceSettings,
    store: Store,
    wired: Wired,
    set_serving: Callable[[bool], Awaitable[None]],
) -> list[tuple[str, Job]]:
    """Every background task of a replica, by name."""
    hub, app = wired.hub, wired.app

    async def load(subjects: Sequence[str]) -> dict[str, Entitlements]:
        return {s: e.entitlements for s, e in (await app.reads.load(subjects)).items()}

    listener = change_listener(settings, store, hub)
    jobs: list[tuple[str, Job]] = [
        (
            "database health",
            lambda: watch_database(store, set_serving, settings.health_interval_seconds),
        ),
        ("change listener", listener.run),
        (
            "change follower",
            lambda: hub.follow(
                store.change_log_horizon, store.follow_changes, load, store.change_log_identity
            ),
        ),
        ("heartbeats", hub.beat),
        ("memory release", release_forever),
        (
            "housekeeping",
            lambda: run_housekeeping(
                store,
                settings.change_log_retention_seconds,
                settings.payload_retention_seconds,
                settings.usage_retention_seconds,
            ),
        ),
    ]
    jobs += notifier_jobs(settings, store, app)
    if settings.metrics:
        sources = MetricSources(hub, store, listener, wired.cache)
        jobs.append(("metrics sampler", lambda: sample_forever(sources)))
    reconciler = app.reconciler
    if reconciler is not None and settings.reconcile_interval_seconds > 0:
        owner = f"{socket.gethostname()}:{os.getpid()}"
        jobs.append(
            (
                "reconcile schedule",
                lambda: run_reconcile_schedule(
                    store, reconciler, settings.reconcile_interval_seconds, owner
                ),
            )
        )
    return jobs
