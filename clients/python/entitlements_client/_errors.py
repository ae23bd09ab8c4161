"""One exception tree for every way a call can fail, local or remote (as httpx's `HTTPError`
tree): an app catches `InvalidArgument` whether the local cache or the service refused the
call. Each class carries the gRPC status code name it stands for (`code`), and
`error_from_rpc` is the one place a gRPC error becomes one of them (the `entitlements` CLI
uses it too)."""

from __future__ import annotations

import grpc
import grpc.aio


class EntitlementsError(Exception):
    """Base of every error this library raises about a call; `code` is the gRPC code name."""

    code: str = "UNKNOWN"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:  # a status without a class of its own keeps its name
            self.code = code


class InvalidArgument(EntitlementsError, ValueError):
    """The call named something the catalog lacks, or a value out of range (also a
    `ValueError`, as the local cache raised before this tree existed)."""

    code = "INVALID_ARGUMENT"


class NotFound(EntitlementsError):
    """Something the call named (an override, a grant, a reservation) does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(EntitlementsError):
    code = "ALREADY_EXISTS"


class PermissionDenied(EntitlementsError):
    """The caller's identity is known and not allowed (mutual TLS, the sync secret)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(EntitlementsError):
    """No valid read token (or sync secret) was sent."""

    code = "UNAUTHENTICATED"


class ResourceExhausted(EntitlementsError):
    """Over a server limit (streams, message size, rate); retry later."""

    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(EntitlementsError):
    """The service (or this client) is not configured for the call."""

    code = "FAILED_PRECONDITION"


class OutOfRange(EntitlementsError):
    """A resume point the service no longer has."""

    code = "OUT_OF_RANGE"


class Unavailable(EntitlementsError):
    """The service could not be reached, or a dependency of it did not answer; retry."""

    code = "UNAVAILABLE"


class DeadlineExceeded(EntitlementsError):
    """No answer within the client's `timeout`."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(EntitlementsError):
    code = "CANCELLED"


class Unimplemented(EntitlementsError):
    """The service does not have this call (an older version)."""

    code = "UNIMPLEMENTED"


class Internal(EntitlementsError):
    """The service failed; its logs say why."""

    code = "INTERNAL"


class ClientConfigError(FailedPrecondition, ValueError):
    """A client setting is unusable (a TLS file unreadable, a bound out of range); the
    message names it."""


_BY_CODE: dict[grpc.StatusCode, type[EntitlementsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
}


def error_from_rpc(exc: grpc.RpcError) -> EntitlementsError:
    """The library's error for a failed gRPC call: the class of its status code (UNKNOWN and
    codes without a class of their own: `EntitlementsError`) and the service's details."""
    call = exc if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
    status = call.code() if call is not None else None
    details = (call.details() if call is not None else None) or ""
    if status is None:
        return EntitlementsError(details or "the call failed")
    message = details or status.name.lower().replace("_", " ")
    cls = _BY_CODE.get(status)
    return cls(message) if cls is not None else EntitlementsError(message, code=status.name)
