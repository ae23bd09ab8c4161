"""`entitlements`: the operator CLI, on the client library's public API (`entitlements_client`:
its channel, TLS settings and error mapping) and the service's generated stubs (rpc.py), whose
messages it prints as grpcurl does.

Global options (--target, --json, --progress) go before or after the command. Under --json
every command prints one JSON document on stdout (the proto field names, as grpcurl prints
them), and so does every error: {"error": {"code": "UNAVAILABLE", "message": "..."}}.

Exit codes: 0 success; 1 the answer was "no" (check: not allowed, consume: did not fit and
nothing was recorded, verify: differences found, catalog check: mismatches, catalog validate:
invalid, status: not serving or an unknown Clerk plan seen); 2 usage or configuration error;
3 the service (or, for reconcile and catalog import, Clerk's API) could not be reached or
refused the call.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from entitlements_cli.errors import (
    EXIT_USAGE,
    CliError,
    ServiceError,
    from_client_error,
    from_rpc_error,
)
from entitlements_cli.output import error_json
from entitlements_cli.parser import ArgumentsError, build_parser, wants_json
from entitlements_client import EntitlementsError

EXIT_INTERRUPTED = 130


def _report(error: CliError, as_json: bool) -> int:
    if as_json:
        error_json(error.code, error.message)
    elif isinstance(error, ServiceError):
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
    else:
        print(f"error: {error.message}", file=sys.stderr)
    return error.exit_code


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure is reported (as JSON under --json), never raised."""
    try:
        return int(args.func(args))
    except CliError as exc:
        return _report(exc, args.json)
    except grpc.RpcError as exc:
        return _report(from_rpc_error(exc), args.json)
    except EntitlementsError as exc:  # e.g. ClientConfigError: a TLS file unreadable
        return _report(from_client_error(exc), args.json)
    except KeyboardInterrupt:
        interrupted = CliError("interrupted", code="CANCELLED", exit_code=EXIT_INTERRUPTED)
        return _report(interrupted, args.json)
    except Exception as exc:  # a bug of ours: still one line (or one JSON object), no traceback
        return _report(CliError(f"{type(exc).__name__}: {exc}", code="INTERNAL"), args.json)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(__doc__).parse_args(argv)
    except ArgumentsError as exc:
        message = f"{exc.parser.prog}: {exc.message}"
        if wants_json(argv):
            error_json("INVALID_ARGUMENT", message)
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(run(args))
