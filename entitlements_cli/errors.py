"""What the CLI reports as an error: a gRPC-style code name, a message and an exit code.

Under `--json` every error is one object on stdout, `{"error": {"code": …, "message": …}}`;
otherwise `error: …` on stderr. The exit code is the same either way: 2 bad arguments or
missing configuration, 3 the service (or Clerk's API, for reconcile) refused or was unreachable.
"""

from __future__ import annotations

import grpc

from entitlements_client import (
    EntitlementsError,
    FailedPrecondition,
    InvalidArgument,
    error_from_rpc,
)

EXIT_USAGE = 2
EXIT_SERVICE = 3


class CliError(Exception):
    """An error with the code name shown under `--json` and the process's exit code."""

    code = "UNKNOWN"
    exit_code = EXIT_SERVICE

    def __init__(self, message: str, *, code: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """Bad arguments (exit code 2)."""

    code = "INVALID_ARGUMENT"
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """Missing or unusable configuration: a secret not set, a TLS file unreadable (exit code 2)."""

    code = "FAILED_PRECONDITION"


class ServiceError(CliError):
    """The service answered with an error status (shown as `error: CODE: details`)."""


def from_client_error(exc: EntitlementsError) -> ServiceError:
    """The client library's error as the CLI reports it: its code name and message; exit
    code 2 for INVALID_ARGUMENT and FAILED_PRECONDITION (the call was wrong), else 3."""
    wrong = isinstance(exc, InvalidArgument | FailedPrecondition)
    return ServiceError(exc.message, code=exc.code, exit_code=EXIT_USAGE if wrong else EXIT_SERVICE)


def from_rpc_error(exc: grpc.RpcError) -> ServiceError:
    """A failed call of the CLI's own, mapped by the client library's one mapping."""
    return from_client_error(error_from_rpc(exc))
