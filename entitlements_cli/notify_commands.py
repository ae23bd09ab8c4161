"""`entitlements notifications`: recent change notifications and failures, `resend ID`, and
`enable URL` for an endpoint that answered 410 Gone.

These read the service's database directly (DATABASE_URL, from the environment or make run's
dev.env): the outbox is operators' data, like the service's own tables, and needs no running
service to inspect."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from entitlements_cli.errors import CliError, ConfigError, UsageError
from entitlements_cli.settings import dev_env_file, setting

T = TypeVar("T")

_LIST = """
SELECT id, endpoint, message_id, subject, version, status, attempts, last_status, last_error,
       created_at, last_attempt_at, done_at
  FROM notify_deliveries
 WHERE ($1::text IS NULL OR status = $1)
 ORDER BY id DESC LIMIT $2
"""


def _dsn() -> str:
    dsn = setting("DATABASE_URL")
    if not dsn:
        raise ConfigError(
            f"DATABASE_URL is not set (and no {dev_env_file()}): the service's database"
        )
    return dsn


def _run(work: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    async def go() -> T:
        try:
            conn = await asyncpg.connect(_dsn(), timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise CliError(f"cannot reach the database ({type(exc).__name__})") from None
        try:
            return await work(conn)
        except asyncpg.UndefinedTableError:
            raise CliError("no notification tables: the database predates migration 0010") from None
        finally:
            await conn.close()

    return asyncio.run(go())


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def cmd_notifications(args: argparse.Namespace) -> int:
    status = "failed" if args.failed else args.status

    async def work(conn: asyncpg.Connection[Any]) -> list[dict[str, Any]]:
        rows = await conn.fetch(_LIST, status, args.limit)
        endpoints = await conn.fetch("SELECT url, disabled_at FROM notify_endpoints")
        out = [
            {
                **{k: r[k] for k in ("id", "endpoint", "message_id", "subject", "version")},
                **{k: r[k] for k in ("status", "attempts", "last_status", "last_error")},
                **{k: _iso(r[k]) for k in ("created_at", "last_attempt_at", "done_at")},
            }
            for r in rows
        ]
        for e in endpoints:
            if e["disabled_at"] is not None:
                out.append({"endpoint": e["url"], "disabled_at": _iso(e["disabled_at"])})
        return out

    found = _run(work)
    if args.json:
        print(json.dumps({"notifications": found}, indent=2, sort_keys=True))
        return 0
    for n in found:
        if "id" not in n:
            print(
                f"endpoint disabled (answered 410 Gone): {n['endpoint']} since {n['disabled_at']}"
            )
            continue
        answer = n["last_status"] or n["last_error"] or "-"
        print(
            f"{n['id']:>8}  {n['created_at'][:19]}  {n['status']:<9} {n['attempts']:>3}x  "
            f"{answer!s:<8} {n['subject']}  v{n['version']}  {n['message_id']}  {n['endpoint']}"
        )
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    """Queue a delivery again (failed or delivered): the same webhook-id and body."""

    async def work(conn: asyncpg.Connection[Any]) -> str | None:
        value: str | None = await conn.fetchval(
            """UPDATE notify_deliveries SET status = 'pending', pending_since = now(),
                      next_attempt_at = now(), lease_until = NULL, done_at = NULL
                WHERE id = $1 RETURNING message_id""",
            args.id,
        )
        return value

    message_id = _run(work)
    if message_id is None:
        raise UsageError(f"no notification {args.id}", code="NOT_FOUND")
    if args.json:
        print(json.dumps({"id": args.id, "message_id": message_id, "status": "pending"}))
    else:
        print(f"notification {args.id} ({message_id}) queued again")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    """Send to an endpoint again after it answered 410 Gone (its queue resumes)."""

    async def work(conn: asyncpg.Connection[Any]) -> str:
        status: str = await conn.execute(
            """UPDATE notify_endpoints SET disabled_at = NULL, disabled_reason = NULL
                WHERE url = $1""",
            args.url,
        )
        return status

    if _run(work).split()[-1] == "0":
        raise UsageError(f"no notification endpoint {args.url}", code="NOT_FOUND")
    print(json.dumps({"endpoint": args.url, "enabled": True}) if args.json else "enabled")
    return 0


def add_commands(parent: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    parent.set_defaults(func=cmd_notifications)
    parent.add_argument("--limit", type=int, default=50, help="at most this many (newest first)")
    parent.add_argument("--status", choices=("pending", "delivered", "failed"))
    parent.add_argument("--failed", action="store_true", help="only those given up")
    sub = parent.add_subparsers(dest="notifications_command", required=False, metavar="COMMAND")
    p = sub.add_parser(
        "resend", help="send notification ID again (same webhook-id)", parents=[common]
    )
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_resend)
    p = sub.add_parser("enable", help="resume an endpoint disabled by 410 Gone", parents=[common])
    p.add_argument("url")
    p.set_defaults(func=cmd_enable)
