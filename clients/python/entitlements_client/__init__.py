"""Client library for the entitlement service: `can_use`, `get_limits`, `check_limit`.

`EntitlementsClient` (sync) and `AsyncEntitlementsClient` (asyncio) call the gRPC API; with
`local_cache=True` they also keep an in-process cache fed by `WatchEntitlements`, answering
checks without a network hop only while the stream's heartbeats say the cache is at most
`max_staleness` seconds old (default 5) and each answer's `valid_until` has not passed;
otherwise they ask the service, and raise if it cannot be reached. TLS and mutual TLS (`Tls`),
a read token, and keepalive are supported.

Metered limits (SPEC §10.1) are the service's to count: `consume`, `report_usage`, `reserve` /
`commit` / `release` and `get_usage` always call it, and so does `check_limit` on a metered
limit; the local cache answers features (per-customer overrides included) and limit values only.
"""

from entitlements_client.admin import AdminClient
from entitlements_client.aio import AsyncEntitlementsClient
from entitlements_client.answers import (
    Decision,
    LimitCheck,
    Limits,
    LimitValue,
    MeterPeriod,
    Override,
    Snapshot,
)
from entitlements_client.core import ClientConfigError, Tls, connect
from entitlements_client.sync import EntitlementsClient
from entitlements_client.usage import (
    Consumption,
    MeterUsage,
    Reservation,
    Settlement,
    Usage,
    UsageReport,
)

__all__ = [
    "AdminClient",
    "AsyncEntitlementsClient",
    "ClientConfigError",
    "Consumption",
    "Decision",
    "EntitlementsClient",
    "LimitCheck",
    "LimitValue",
    "Limits",
    "MeterPeriod",
    "MeterUsage",
    "Override",
    "Reservation",
    "Settlement",
    "Snapshot",
    "Tls",
    "Usage",
    "UsageReport",
    "connect",
]
