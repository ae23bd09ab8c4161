"""Wiring of one replica, the first part of the composition root: the application over its
adapters, and the servicers the gRPC port and the HTTP listener share. Nothing here starts
anything (server.py starts the servers, background.py the background tasks)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from service.adapters.cache import EntitlementCache
from service.adapters.clerk_api import ClerkApi, ClerkApiSettings
from service.adapters.postgres.store import Store
from service.application.app import Application, build_application
from service.application.change_feed import ChangeHub, StreamLimits
from service.application.ports import ClerkConnector, ClerkSubscriptions, Clock
from service.config import ServiceSettings
from service.domain.catalog import Catalog
from service.entrypoints.grpc_api.billing_sync import BillingSyncServicer
from service.entrypoints.grpc_api.servicers import EntitlementServicer
from service.entrypoints.grpc_api.usage_api import UsageServicer
from service.metrics import PrometheusEvents


@dataclass(frozen=True)
class Wired:
    app: Application
    cache: EntitlementCache | None
    hub: ChangeHub
    entitlements: EntitlementServicer
    usage: UsageServicer
    billing: BillingSyncServicer


def clerk_connector(settings: ClerkApiSettings | None) -> ClerkConnector | None:
    if settings is None:
        return None

    def connect() -> contextlib.AbstractAsyncContextManager[ClerkSubscriptions]:
        return ClerkApi(settings)

    return connect


def wire(settings: ServiceSettings, catalog: Catalog, store: Store, clock: Clock) -> Wired:
    cache = EntitlementCache(settings.cache_max_subjects) if settings.cache_enabled else None
    hub = ChangeHub(
        cache, StreamLimits(settings.watch_max_streams, settings.watch_max_streams_per_peer)
    )
    app = build_application(
        catalog=catalog,
        clock=clock,
        transactions=store,
        operations=store,
        change_log=store,
        cache=cache,
        hub=hub,
        clerk=clerk_connector(settings.clerk),
        usage=store,
        unknown_plan=settings.unknown_plan,
        events=PrometheusEvents(),
    )
    return Wired(
        app,
        cache,
        hub,
        EntitlementServicer(app, settings.watch_max_subjects),
        UsageServicer(app),
        BillingSyncServicer(app),
    )
