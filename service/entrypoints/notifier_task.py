"""Wiring of outbound change notifications (ENTITLEMENTS_NOTIFY_URL): the notifier that queues
them and one delivery worker per endpoint, as background tasks of the server. Nothing of it
runs when the URL is unset."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from service.adapters.postgres.store import Store
from service.adapters.webhook_sender import WebhookSender
from service.application.app import Application
from service.application.failures import FailureRun
from service.application.notifications import Notifier
from service.application.notify_delivery import DeliveryPolicy, EndpointWorker
from service.config import ServiceSettings
from service.domain.resolution import Entitlements
from service.entrypoints.supervision import Job
from service.metrics import NOTIFY_OLDEST_PENDING

log = logging.getLogger(__name__)

GAUGE_SECONDS = 5.0
PRUNE_SECONDS = 3600.0
RETENTION_SECONDS = 7 * 24 * 3600.0


async def _gauge_and_prune(store: Store) -> None:
    """The oldest-pending gauge, and forgetting settled deliveries after a week."""
    pruned_at = 0.0
    loop = asyncio.get_running_loop()
    failing = FailureRun("notification gauge", log)
    while True:
        try:
            NOTIFY_OLDEST_PENDING.set(await store.oldest_pending_seconds())
            if loop.time() - pruned_at >= PRUNE_SECONDS:
                await store.prune_notifications(RETENTION_SECONDS)
                pruned_at = loop.time()
        except Exception:  # broad on purpose: the database away, whatever it is: next time
            failing.failed("cannot read the outbox")
        else:
            failing.recovered()
        await asyncio.sleep(GAUGE_SECONDS)


def notifier_jobs(
    settings: ServiceSettings, store: Store, app: Application
) -> list[tuple[str, Job]]:
    """The background tasks that notify ENTITLEMENTS_NOTIFY_URL of changes (none when unset),
    by name, for the server's supervisor."""
    notify = settings.notify
    if notify is None:
        return []
    policy = DeliveryPolicy(
        timeout_seconds=notify.timeout_seconds,
        max_backoff_seconds=notify.max_backoff_seconds,
        give_up_seconds=notify.give_up_seconds,
        concurrency=notify.concurrency,
        poll_seconds=notify.poll_seconds,
    )
    workers = [
        EndpointWorker(
            url,
            store,
            WebhookSender(url, notify.secrets, notify.timeout_seconds),
            policy,
            app.events,
        )
        for url in notify.urls
    ]

    async def load(subjects: Sequence[str]) -> dict[str, Entitlements]:
        return {s: e.entitlements for s, e in (await app.reads.load(subjects)).items()}

    def queued() -> None:
        for worker in workers:
            worker.wake()

    notifier = Notifier(
        store,
        notify.urls,
        store.follow_changes,
        store.change_log_horizon,
        load,
        app.clock.now_ms,
        poll_seconds=notify.poll_seconds,
        on_queued=queued,
        bounds=store.change_log_bounds,
    )
    app.hub.wakers.append(notifier.wake)
    log.info("notifying %d endpoint(s) of entitlement changes", len(workers))
    return [
        ("notifier", notifier.run),
        ("notification gauge", lambda: _gauge_and_prune(store)),
        *((f"notifications to {w.endpoint}", w.run) for w in workers),
    ]
