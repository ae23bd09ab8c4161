"""Why a connection to DATABASE_URL failed, in one line an operator can act on and without the
password: the service and `migrate` print it and exit 2 (the URL cannot be read) or 3 (the
server is unreachable, or refused the name, role, password or TLS settings)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from service.application.ports import StoreUnavailable

T = TypeVar("T")

MASK = "***"
_PASSWORD_PARAM = re.compile(r"(password=)([^&\s]*)", re.IGNORECASE)

# OSError covers refused and unroutable connections, unknown host names, TLS refused by the
# server ("rejected SSL upgrade") and certificates that do not verify.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
)


class DatabaseUrlInvalid(Exception):
    """DATABASE_URL cannot be read as a PostgreSQL URL: a configuration error, not an outage."""


def _password(dsn: str) -> str | None:
    """The password written in `dsn` (URL userinfo), if any; read without a URL parser, since
    the URL may be one no parser accepts."""
    _, sep, rest = dsn.partition("://")
    if not sep:
        return None
    at = rest.rfind("@")
    userinfo = rest[:at] if at >= 0 else ""
    _, colon, password = userinfo.partition(":")
    return password if colon and password else None


def mask_dsn(dsn: str) -> str:
    """`dsn` with its password (userinfo or `password=` parameter) shown as ***; when unsure
    where the userinfo ends, more is masked, never less."""
    masked = dsn
    password = _password(dsn)
    if password is not None:
        scheme, _, rest = dsn.partition("://")
        at = rest.rfind("@")
        user = rest[:at].partition(":")[0]
        masked = f"{scheme}://{user}:{MASK}@{rest[at + 1 :]}"
    return _PASSWORD_PARAM.sub(rf"\g<1>{MASK}", masked)


def _one_line(text: str, dsn: str) -> str:
    """`text` on one line, with every password of `dsn` masked."""
    for secret in (_password(dsn), *(m.group(2) for m in _PASSWORD_PARAM.finditer(dsn))):
        if secret:
            text = text.replace(secret, MASK)
    return " ".join(text.split())


def _reason(exc: BaseException, dsn: str) -> str:
    text = _one_line(str(exc), dsn)
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__


async def connect_explained(connect: Callable[[], Awaitable[T]], dsn: str) -> T:
    """Run `connect` (a first connection to `dsn`); a failure becomes `DatabaseUrlInvalid` or
    `StoreUnavailable` whose message names DATABASE_URL (masked) and says why."""
    shown = f"DATABASE_URL={mask_dsn(dsn)}"
    invalid = f"{shown} is not a PostgreSQL URL asyncpg can use"
    try:
        return await connect()
    except asyncpg.exceptions.ClientConfigurationError as exc:  # before InterfaceError
        raise DatabaseUrlInvalid(f"{invalid}: {_reason(exc, dsn)}") from exc
    except asyncpg.PostgresError as exc:  # the server answered: no such database or role, ...
        raise StoreUnavailable(
            f"PostgreSQL at {shown} refused the connection: {_reason(exc, dsn)}"
        ) from exc
    except _UNREACHABLE as exc:  # before ValueError: a certificate that fails is both
        reason = _reason(exc, dsn)
        raise StoreUnavailable(f"cannot connect to PostgreSQL at {shown}: {reason}") from exc
    except (ValueError, OverflowError) as exc:  # a port that is not a number, or out of range
        raise DatabaseUrlInvalid(f"{invalid}: {_reason(exc, dsn)}") from exc
