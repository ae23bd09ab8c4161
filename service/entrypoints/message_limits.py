"""The largest request message each RPC accepts, whatever the protocol (gRPC, Connect).

What a caller sends never decides what we hold: every listener refuses a request message larger
than its method's cap here (RESOURCE_EXHAUSTED). Reads carry a subject and a feature or limit
name (each at most 255 bytes), so 64 KiB is far above any real one; BatchCanUse carries up to
1000 checks (~300 KB at the longest names) and WatchEntitlements a subject list, so 1 MiB each.
The write side (BillingSyncService) carries a raw webhook body (the gateway accepts up to 1 MiB,
webhook_gateway/config.py max_body_bytes) and is reached only with the sync secret.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

READ_MESSAGE_BYTES = 64 * KIB
WATCH_MESSAGE_BYTES = 1 * MIB
BATCH_MESSAGE_BYTES = 1 * MIB
# BillingSyncService: a webhook body of up to 1 MiB plus its event id, type and timestamps.
SYNC_MESSAGE_BYTES = 1 * MIB + 64 * KIB

# The default of ENTITLEMENTS_WATCH_MAX_SUBJECTS: subjects named by one WatchEntitlements
# request (10,000 Clerk ids of ~32 bytes are ~340 KB, well inside WATCH_MESSAGE_BYTES).
WATCH_MAX_SUBJECTS = 10_000

_ENTITLEMENTS = "/entitlements.v1.EntitlementService/"
_SYNC = "/entitlements.v1.BillingSyncService/"

_CAPS = {
    f"{_ENTITLEMENTS}WatchEntitlements": WATCH_MESSAGE_BYTES,
    f"{_ENTITLEMENTS}BatchCanUse": BATCH_MESSAGE_BYTES,
}

# The largest cap of any method: the one receive limit a server-wide option can hold.
LARGEST_MESSAGE_BYTES = max(READ_MESSAGE_BYTES, SYNC_MESSAGE_BYTES, *_CAPS.values())


def request_cap(method_full_name: str) -> int:
    """The request cap of `method_full_name` ("/package.Service/Method"); any method not named
    above (reads, health, reflection) gets READ_MESSAGE_BYTES, the sync service its own."""
    cap = _CAPS.get(method_full_name)
    if cap is not None:
        return cap
    if method_full_name.startswith(_SYNC):
        return SYNC_MESSAGE_BYTES
    return READ_MESSAGE_BYTES
