"""`AsyncFakeEntitlementsClient`: see `entitlements_client.testing`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

from entitlements_client._answers import Decision, LimitCheck, Limits, Snapshot
from entitlements_client._fake import FakeEntitlementsClient, Plan
from entitlements_client._usage import Consumption, Reservation, Settlement, Usage, UsageReport


class AsyncFakeEntitlementsClient:
    """`AsyncEntitlementsClient` in memory: the same state and answers as
    `FakeEntitlementsClient` (reach it as `.fake` to set plans, features, limits, usage)."""

    def __init__(
        self,
        plans: Mapping[str, Plan],
        *,
        default_plan: str,
        metered: Iterable[str] = (),
        on_change: Callable[[str, Snapshot], object] | None = None,
    ) -> None:
        self.fake = FakeEntitlementsClient(
            plans, default_plan=default_plan, metered=metered, on_change=on_change
        )

    @property
    def synced(self) -> bool:
        return self.fake.synced

    async def start(self) -> None:
        self.fake.start()

    async def wait_synced(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 (the sync one's)
        return self.fake.wait_synced(timeout)

    async def close(self) -> None:
        self.fake.close()

    async def __aenter__(self) -> AsyncFakeEntitlementsClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def can_use(self, subject: str, feature: str) -> bool:
        return self.fake.can_use(subject, feature)

    async def check(self, subject: str, feature: str) -> Decision:
        return self.fake.check(subject, feature)

    async def snapshot(self, subject: str) -> Snapshot:
        return self.fake.snapshot(subject)

    async def get_limits(self, subject: str) -> Limits:
        return self.fake.get_limits(subject)

    async def check_limit(
        self, subject: str, limit: str, current_usage: int = 0, requested: int = 1
    ) -> LimitCheck:
        return self.fake.check_limit(subject, limit, current_usage, requested)

    async def consume(
        self, subject: str, limit: str, amount: int = 1, idempotency_key: str | None = None
    ) -> Consumption:
        return self.fake.consume(subject, limit, amount, idempotency_key)

    async def report_usage(
        self,
        subject: str,
        limit: str,
        delta: int | None = None,
        set: int | None = None,
        idempotency_key: str | None = None,
    ) -> UsageReport:
        return self.fake.report_usage(subject, limit, delta, set, idempotency_key)

    async def reserve(
        self,
        subject: str,
        limit: str,
        amount: int,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
    ) -> Reservation:
        return self.fake.reserve(subject, limit, amount, ttl_seconds, idempotency_key)

    async def commit(self, reservation_id: str, amount: int) -> Settlement:
        return self.fake.commit(reservation_id, amount)

    async def release(self, reservation_id: str) -> Settlement:
        return self.fake.release(reservation_id)

    async def get_usage(self, subject: str) -> Usage:
        return self.fake.get_usage(subject)
