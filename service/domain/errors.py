"""One error tree for the whole service. Each error names the gRPC status code that answers
it (as a string: the domain knows nothing of gRPC); the error interceptor is the one place
that turns them into status codes, so no traceback or exception text reaches a caller."""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a caller may be told about."""

    code: ClassVar[str] = "INTERNAL"

    def public_message(self) -> str:
        """What the caller is told (the message, unless a subclass hides details)."""
        return str(self)


class InvalidArgument(ServiceError, ValueError):
    """A caller sent a value the API cannot accept; the message says which and why."""

    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """Something the caller named does not exist."""

    code = "NOT_FOUND"


class OutOfRange(ServiceError):
    """A resume point the server no longer has."""

    code = "OUT_OF_RANGE"


class FailedPrecondition(ServiceError):
    """The server is not configured for this call."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    """Over a configured limit; retry later."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    """A dependency (the database, Clerk's API) did not answer; the caller may retry."""

    code = "UNAVAILABLE"
