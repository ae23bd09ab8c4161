"""The command line: global options (`--target`, `--json`, `--progress`) go before or after the
subcommand. Every subparser has them too, from one parent parser whose defaults are
`argparse.SUPPRESS`, so an option not given after the subcommand never clobbers one given
before it; the defaults themselves are the top-level parser's."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import NoReturn

from entitlements_cli import catalog_commands, commands, notify_commands, status_command

GLOBAL_DEFAULTS = {"target": None, "json": False, "progress": None}


class ArgumentsError(Exception):
    """argparse refused the command line (exit code 2); `parser` is the (sub)parser that did."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """Raises instead of printing and exiting, so `main` can report the error as JSON."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsError(self, message)


def global_options(defaults: Mapping[str, object] | None = None) -> Parser:
    """A parent parser with the global options; with `defaults=None` (the subcommands') every
    default is SUPPRESS. Each call makes new actions: argparse shares a parent's action objects
    with its children, so one set for both levels would carry the top level's defaults down."""
    common = Parser(add_help=False)

    def default(name: str) -> object:
        return argparse.SUPPRESS if defaults is None else defaults[name]

    group = common.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--target",
        default=default("target"),
        help="service host:port (default ENTITLEMENTS_TARGET, else 127.0.0.1:50051)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default("json"),
        help='one JSON document on stdout (errors too: {"error": {"code", "message"}})',
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default("progress"),
        help="progress bar on long runs (default: when stderr is a terminal)",
    )
    return common


def wants_json(argv: Sequence[str]) -> bool:
    """Whether `--json` was given anywhere (for reporting a command line argparse refused)."""
    probe = Parser(add_help=False)
    probe.add_argument("--json", action="store_true")
    try:
        known, _ = probe.parse_known_args(argv)
    except ArgumentsError:
        return False
    return bool(known.json)


def build_parser(description: str | None = None) -> Parser:
    parser = Parser(
        prog="entitlements",
        description=description,
        parents=[global_options(GLOBAL_DEFAULTS)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = global_options()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, func: object = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if func is not None:
            p.set_defaults(func=func)
        return p

    p = command("check", "may SUBJECT use FEATURE? (exit 1 when not)", commands.cmd_check)
    p.add_argument("subject")
    p.add_argument("feature")
    command("limits", "SUBJECT's plan and limits", commands.cmd_limits).add_argument("subject")
    command("show", "everything resolved for SUBJECT", commands.cmd_show).add_argument("subject")
    command("plans", "the plan catalog", commands.cmd_plans)
    p = command("usage", "SUBJECT's usage of each metered limit this period", commands.cmd_usage)
    p.add_argument("subject")
    p = command(
        "consume",
        "record AMOUNT (default 1) units of a metered limit when they fit (exit 1 when not)",
        commands.cmd_consume,
    )
    p.add_argument("subject")
    p.add_argument("limit")
    p.add_argument("amount", nargs="?", type=int, default=1)
    p.add_argument("--key", help="idempotency key: pass the same one to retry (default: a new one)")
    p = command("grant", "give SUBJECT a plan (needs the sync secret)", commands.cmd_grant)
    p.add_argument("subject")
    p.add_argument("plan")
    p.add_argument("--reason", required=True)
    p.add_argument("--expires", help="ISO 8601 time (default: until revoked)")
    p = command("revoke", "end a grant (needs the sync secret)", commands.cmd_revoke)
    p.add_argument("grant_id")
    p.add_argument("--reason")
    p = command("history", "SUBJECT's deliveries, grants and plan changes", commands.cmd_history)
    p.add_argument("subject")
    p.add_argument("--limit", type=int, default=100)
    p = command("reconcile", "compare with Clerk's Backend API and repair", commands.cmd_reconcile)
    p.add_argument("subjects", nargs="*", metavar="SUBJECT")
    p.add_argument("--all", action="store_true", help="every known subject")
    p = command("replay", "re-apply stored deliveries with the current parser", commands.cmd_replay)
    p.add_argument("--all", action="store_true", help="every stored delivery")
    p.add_argument("--subject", help="one subject's deliveries")
    p.add_argument("--unparseable", action="store_true", help="those stored UNPARSEABLE")
    command(
        "verify",
        "rebuild state from the stored log and compare (exit 1 on differences)",
        commands.cmd_verify,
    )
    p = command(
        "status",
        "health, log identity, catalog fingerprint and unknown Clerk plans seen "
        "(exit 1 when any, or not serving)",
        status_command.cmd_status,
    )
    p.add_argument(
        "--hours", type=int, help="how far back to look for unknown plans (default 168, a week)"
    )
    add_override_commands(command("override", "per-customer terms (needs the sync secret)"), common)
    notify_commands.add_commands(command("notifications", "change notifications sent"), common)
    catalog = command("catalog", "catalog commands").add_subparsers(
        dest="catalog_command", required=True, metavar="COMMAND"
    )
    catalog.add_parser(
        "check",
        help="Clerk plans the catalog does not map, and catalog slugs Clerk lacks",
        parents=[common],
    ).set_defaults(func=commands.cmd_catalog_check)
    p = catalog.add_parser(
        "validate",
        help="check a catalog file offline, as the service would at start (exit 1: invalid)",
        parents=[common],
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=catalog_commands.cmd_catalog_validate)
    p = catalog.add_parser(
        "import",
        help="write a catalog from Clerk's plans (CLERK_SECRET_KEY), for you to add limits to",
        parents=[common],
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write FILE (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(func=catalog_commands.cmd_catalog_import)
    return parser


def add_override_commands(parent: argparse.ArgumentParser, common: Parser) -> None:
    """`override set SUBJECT (--feature F (--on|--off) | --limit L (--value N | --unlimited))
    [--expires-at ISO] --reason R` and `override remove OVERRIDE_ID [--reason R]`."""
    sub = parent.add_subparsers(dest="override_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "set",
        help="grant or withhold a feature, or replace a limit's value, for one SUBJECT",
        description="grant or withhold a feature, or replace a limit's value, for one SUBJECT",
        parents=[common],
    )
    p.set_defaults(func=commands.cmd_override_set)
    p.add_argument("subject")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--feature", help="a feature of the catalog (with --on or --off)")
    what.add_argument("--limit", help="a limit of the catalog (with --value or --unlimited)")
    on_off = p.add_mutually_exclusive_group()
    on_off.add_argument(
        "--on", dest="enabled", action="store_const", const=True, default=None, help="grant it"
    )
    on_off.add_argument(
        "--off", dest="enabled", action="store_const", const=False, help="withhold it"
    )
    value = p.add_mutually_exclusive_group()
    value.add_argument("--value", type=int, help="the limit's value for SUBJECT")
    value.add_argument("--unlimited", action="store_true")
    p.add_argument("--expires-at", help="ISO 8601 time (default: until removed)")
    p.add_argument("--reason", required=True, help="why (shown in the history)")
    p = sub.add_parser(
        "remove", help="end an override", description="end an override", parents=[common]
    )
    p.set_defaults(func=commands.cmd_override_remove)
    p.add_argument("override_id")
    p.add_argument("--reason")
