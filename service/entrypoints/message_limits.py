"""How large a request message may be, per method, and the fixed public messages of the
refusals: one table for every protocol (the Connect listener and the gRPC port), so a caller
gets the same answer either way.

Reads carry a subject and a feature or limit name: 64 KiB is far above any real one. Watch
(a list of subjects) and BatchCanUse (a list of checks, ~300 KB at the longest names) may
legitimately be larger: 1 MiB. UsageService's requests (a subject, a metered limit's name, an
amount, an idempotency key or a reservation id) are as small as a read's: 64 KiB. The write
side (BillingSyncService, gRPC only) carries a raw webhook body (the gateway accepts up to
1 MiB, webhook_gateway/config.py max_body_bytes) and is reached only with the sync secret.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

KIB = 1024
MIB = 1024 * KIB

# The largest request message of a read (CanUse, GetLimits, CheckLimit, GetEntitlements,
# ListPlans), and of the methods that take a list (after decompression, too).
READ_MAX_BYTES = 64 * KIB
LIST_MAX_BYTES = 1 * MIB
LIST_METHODS = frozenset({"WatchEntitlements", "BatchCanUse"})
# The same caps by the names the gRPC port uses, and the write side's.
READ_MESSAGE_BYTES = READ_MAX_BYTES
WATCH_MESSAGE_BYTES = LIST_MAX_BYTES
BATCH_MESSAGE_BYTES = LIST_MAX_BYTES
# BillingSyncService: a webhook body of up to 1 MiB plus its event id, type and timestamps.
SYNC_MESSAGE_BYTES = 1 * MIB + 64 * KIB
# The largest cap of any method: the one receive limit a server-wide grpc option can hold.
LARGEST_MESSAGE_BYTES = max(READ_MESSAGE_BYTES, LIST_MAX_BYTES, SYNC_MESSAGE_BYTES)

# The default of ENTITLEMENTS_WATCH_MAX_SUBJECTS: subjects named by one WatchEntitlements
# request (10,000 Clerk ids of ~32 bytes are ~340 KB, well inside WATCH_MESSAGE_BYTES).
WATCH_MAX_SUBJECTS = 10_000

_ENTITLEMENTS = "/entitlements.v1.EntitlementService/"
_SYNC = "/entitlements.v1.BillingSyncService/"
_USAGE = "/entitlements.v1.UsageService/"

# The fixed messages a caller is told (never parser or exception text).
UNAUTHENTICATED_MESSAGE = "missing or invalid credentials"
UNDECODABLE_MESSAGE = "request could not be decoded"
TOO_LARGE_MESSAGE = "request message too large"
BUSY_MESSAGE = "too many request bytes in flight; retry later"
BODY_TIMEOUT_MESSAGE = "request body not received in time"
NEEDS_HTTP2_MESSAGE = "gRPC needs HTTP/2; use gRPC-Web or Connect over HTTP/1.1"

# What a caller is told of an error the protocol library raised (malformed JSON or protobuf,
# bad compression, a bad timeout header, …), by code: its own text names parser internals.
LIBRARY_ERROR_MESSAGES: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: UNDECODABLE_MESSAGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TOO_LARGE_MESSAGE,
    grpc.StatusCode.UNIMPLEMENTED: "request encoding not supported",
    grpc.StatusCode.CANCELLED: "request cancelled",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline exceeded",
    grpc.StatusCode.INTERNAL: "internal error",
    grpc.StatusCode.UNKNOWN: "internal error",
}
OTHER_ERROR_MESSAGE = "request failed"


def max_message_bytes(method: str) -> int:
    """The largest request message of `method` (its bare name, e.g. "CanUse")."""
    return LIST_MAX_BYTES if method in LIST_METHODS else READ_MAX_BYTES


def public_message(code: grpc.StatusCode) -> str:
    """The fixed text of a library-raised error of `code`."""
    return LIBRARY_ERROR_MESSAGES.get(code, OTHER_ERROR_MESSAGE)


def request_cap(method_full_name: str) -> int:
    """The request cap of `method_full_name` ("/package.Service/Method"): the sync service its
    own, EntitlementService's methods as above, UsageService's and anything else (health,
    reflection) a read's."""
    if method_full_name.startswith(_SYNC):
        return SYNC_MESSAGE_BYTES
    if method_full_name.startswith(_USAGE):
        return READ_MESSAGE_BYTES
    if method_full_name.startswith(_ENTITLEMENTS):
        return max_message_bytes(method_full_name.removeprefix(_ENTITLEMENTS))
    return READ_MESSAGE_BYTES
