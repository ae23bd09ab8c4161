"""Use case: replay stored deliveries (all, one subject's, or the UNPARSEABLE ones) with the
current parser, in event-id order, each exactly once (see deliveries.ReplayDelivery)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service.application.deliveries import ReplayDelivery
from service.application.ports import DeliveryLog
from service.application.progress import Progress
from service.application.records import DeliverySelector, ReplayResult

PAGE = 100


class ReplayDeliveries:
    def __init__(self, log: DeliveryLog, replay_one: ReplayDelivery) -> None:
        self._log = log
        self._replay_one = replay_one

    async def __call__(self, selector: DeliverySelector) -> AsyncIterator[Progress[ReplayResult]]:
        total = await self._log.count_deliveries(selector)
        done = 0
        after = ""
        while page := await self._log.deliveries_page(selector, after, PAGE):
            after = page[-1].event_id
            batch: list[ReplayResult] = []
            for delivery in page:
                replayed = await self._replay_one(delivery.event_id)
                if replayed is not None:
                    batch.append(replayed)
            done += len(page)
            yield Progress(done, max(total, done), batch)
        if done == 0:
            yield Progress(0, 0)
