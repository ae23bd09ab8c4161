"""The use cases of one replica, built over its ports (see service/entrypoints/server.py, the
composition root). Entrypoints hold an `Application` and call nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from service.application.change_feed import ChangeHub
from service.application.deliveries import ApplyDelivery, DeliveryRules, ReplayDelivery
from service.application.grants import Grants
from service.application.overrides import Overrides
from service.application.ports import (
    Cache,
    ChangeLog,
    ClerkConnector,
    Clock,
    Operations,
    OperatorEvents,
    Transactions,
    UsageReader,
)
from service.application.reads import EntitlementReader
from service.application.reconcile import CheckCatalog, Reconciler
from service.application.records import HistoryRow
from service.application.replay import ReplayDeliveries
from service.application.status import Liveness, ServiceStatus
from service.application.usage import Usage
from service.application.verify import VerifyState
from service.application.watch import MessageBuilder, WatchEntitlements
from service.domain.catalog import Catalog
from service.domain.errors import FailedPrecondition, InvalidArgument
from service.domain.subjects import require_subject
from service.domain.unknown_plans import UnknownPlanPolicy

M = TypeVar("M")
DEFAULT_HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000


@dataclass(frozen=True)
class Application:
    catalog: Catalog
    clock: Clock
    reads: EntitlementReader
    hub: ChangeHub
    apply_delivery: ApplyDelivery
    replay: ReplayDeliveries
    grants: Grants
    overrides: Overrides
    usage: Usage
    verify: VerifyState
    operations: Operations
    change_log: ChangeLog
    status: ServiceStatus
    reconciler: Reconciler | None = None
    catalog_check: CheckCatalog | None = None
    events: OperatorEvents | None = None

    async def history(self, subject: str, page_size: int = 0) -> list[HistoryRow]:
        """The subject's history, newest first: `page_size` entries (0: 100; at most 1000)."""
        subject = require_subject(subject)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        return await self.operations.history(
            subject, min(page_size or DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE)
        )

    def watch(self, build: MessageBuilder[M], max_subjects: int) -> WatchEntitlements[M]:
        """WatchEntitlements with the entrypoint's messages (`build`)."""
        return WatchEntitlements(
            self.hub, self.change_log, self.reads, self.catalog, build, max_subjects, self.events
        )

    def reconcile_or_refuse(self) -> Reconciler:
        if self.reconciler is None:
            raise FailedPrecondition("reconciliation needs CLERK_SECRET_KEY on the server")
        return self.reconciler

    def catalog_check_or_refuse(self) -> CheckCatalog:
        if self.catalog_check is None:
            raise FailedPrecondition("catalog check needs CLERK_SECRET_KEY on the server")
        return self.catalog_check


def build_application(
    *,
    catalog: Catalog,
    clock: Clock,
    transactions: Transactions,
    operations: Operations,
    change_log: ChangeLog,
    cache: Cache | None,
    hub: ChangeHub,
    clerk: ClerkConnector | None,
    usage: UsageReader,
    unknown_plan: UnknownPlanPolicy = UnknownPlanPolicy.DEFAULT,
    events: OperatorEvents | None = None,
) -> Application:
    """`events`: where what operators count goes (the Prometheus adapter in the service)."""
    rules = DeliveryRules(catalog, clock, unknown_plan)
    reads = EntitlementReader(operations, catalog, cache, clock, events)
    apply_delivery = ApplyDelivery(transactions, rules, hub, events=events)
    replay_delivery = ReplayDelivery(transactions, rules, hub)
    return Application(
        catalog=catalog,
        clock=clock,
        reads=reads,
        hub=hub,
        apply_delivery=apply_delivery,
        replay=ReplayDeliveries(operations, replay_delivery),
        grants=Grants(transactions, catalog, clock, hub),
        overrides=Overrides(transactions, catalog, clock, hub),
        usage=Usage(transactions, reads, usage, catalog, clock),
        verify=VerifyState(operations, catalog, clock, unknown_plan),
        operations=operations,
        change_log=change_log,
        status=ServiceStatus(
            operations,
            change_log,
            catalog,
            clock,
            unknown_plan,
            lambda: Liveness(hub.started.is_set(), hub.listening, hub.log_id),
        ),
        reconciler=None
        if clerk is None
        else Reconciler(operations, clerk, apply_delivery, catalog, clock),
        catalog_check=None if clerk is None else CheckCatalog(clerk, catalog),
        events=events,
    )
