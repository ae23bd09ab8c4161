"""Client library for the entitlement service: `can_use`, `get_limits`, `check_limit`.

`EntitlementsClient` (sync) and `AsyncEntitlementsClient` (asyncio) call the gRPC API; with
`local_cache=True` they also keep an in-process cache fed by `WatchEntitlements`, answering
checks without a network hop only while the stream's heartbeats say the cache is at most
`max_staleness` seconds old (default 5) and each answer's `valid_until` has not passed;
otherwise they ask the service, and raise if it cannot be reached. TLS and mutual TLS (`Tls`),
a read token, and keepalive are supported.
"""

from entitlements_client.admin import AdminClient
from entitlements_client.aio import AsyncEntitlementsClient
from entitlements_client.answers import Decision, LimitCheck, Limits, Snapshot
from entitlements_client.core import ClientConfigError, Tls, connect
from entitlements_client.sync import EntitlementsClient

__all__ = [
    "AdminClient",
    "AsyncEntitlementsClient",
    "ClientConfigError",
    "Decision",
    "EntitlementsClient",
    "LimitCheck",
    "Limits",
    "Snapshot",
    "Tls",
    "connect",
]
