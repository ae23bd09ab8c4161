"""Client library for the entitlement service: `can_use`, `get_limits`, `check_limit`.

`EntitlementsClient` (sync) and `AsyncEntitlementsClient` (asyncio) call the gRPC API; with
`local_cache=True` they also keep an in-process cache fed by `WatchEntitlements`, answering
checks without a network hop while the stream is in sync and each answer's `valid_until`
has not passed, and falling back to RPCs otherwise.
"""

from entitlements_client.aio import AsyncEntitlementsClient
from entitlements_client.local import Decision, LimitCheck, Limits, Snapshot
from entitlements_client.sync import EntitlementsClient

__all__ = [
    "AsyncEntitlementsClient",
    "Decision",
    "EntitlementsClient",
    "LimitCheck",
    "Limits",
    "Snapshot",
]
