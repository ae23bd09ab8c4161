"""How large a request message may be, per EntitlementService method, and the fixed public
messages of the refusals: one table for every protocol (the Connect listener applies it now;
the gRPC port can import the same numbers), so a caller gets the same answer either way.

Reads carry a subject and a feature or limit name: 64 KiB is far above any real one. Watch
(a list of subjects) and BatchCanUse (a list of checks) may legitimately be larger: 1 MiB.
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
