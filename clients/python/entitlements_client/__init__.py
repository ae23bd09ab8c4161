"""Client library for the entitlement service: `can_use`, `get_limits`, `check_limit`.

`EntitlementsClient` (sync) and `AsyncEntitlementsClient` (asyncio) call the gRPC API; with
`local_cache=True` they also keep an in-process cache fed by `WatchEntitlements`, answering
checks without a network hop only while the stream's heartbeats say the cache is at most
`max_staleness` seconds old (default 5) and each answer's `valid_until` has not passed;
otherwise they ask the service. TLS and mutual TLS (`Tls`), a read token, and keepalive are
supported; `on_change` hears of each change the stream brings.

Every failure is an `EntitlementsError` subclass named after its gRPC code (`InvalidArgument`,
`Unavailable`, …), the same whether the local cache or the service refused the call.

Metered limits (SPEC §10.1) are the service's to count: `consume`, `report_usage`, `reserve` /
`commit` / `release` and `get_usage` always call it, and so does `check_limit` on a metered
limit; the local cache answers features (per-customer overrides included) and limit values only.
`entitlements_client.testing` has in-memory fakes for an app's own unit tests.

Everything public is exported here (`__all__`); the modules behind it are private.
"""

from entitlements_client._admin import AdminClient
from entitlements_client._admin_answers import (
    CatalogCheck,
    ClerkPlan,
    History,
    HistoryEntry,
    OverrideChange,
    PlanChange,
    ReconcileProgress,
    Reconciliation,
    ReplayedDelivery,
    ReplayProgress,
    StateDifference,
    VerifyProgress,
)
from entitlements_client._aio import AsyncEntitlementsClient
from entitlements_client._answers import (
    Decision,
    LimitCheck,
    Limits,
    LimitValue,
    MeterPeriod,
    Override,
    Snapshot,
)
from entitlements_client._config import Tls, connect
from entitlements_client._errors import (
    AlreadyExists,
    Cancelled,
    ClientConfigError,
    DeadlineExceeded,
    EntitlementsError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_from_rpc,
)
from entitlements_client._sync import EntitlementsClient
from entitlements_client._usage import (
    Consumption,
    MeterUsage,
    Reservation,
    Settlement,
    Usage,
    UsageReport,
)

__all__ = [
    "AdminClient",
    "AlreadyExists",
    "AsyncEntitlementsClient",
    "Cancelled",
    "CatalogCheck",
    "ClerkPlan",
    "ClientConfigError",
    "Consumption",
    "DeadlineExceeded",
    "Decision",
    "EntitlementsClient",
    "EntitlementsError",
    "FailedPrecondition",
    "History",
    "HistoryEntry",
    "Internal",
    "InvalidArgument",
    "LimitCheck",
    "LimitValue",
    "Limits",
    "MeterPeriod",
    "MeterUsage",
    "NotFound",
    "OutOfRange",
    "Override",
    "OverrideChange",
    "PermissionDenied",
    "PlanChange",
    "ReconcileProgress",
    "Reconciliation",
    "ReplayProgress",
    "ReplayedDelivery",
    "Reservation",
    "ResourceExhausted",
    "Settlement",
    "Snapshot",
    "StateDifference",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "UsageReport",
    "VerifyProgress",
    "connect",
    "error_from_rpc",
]
