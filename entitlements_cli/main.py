"""`entitlements`: the operator CLI, built on the client library (`entitlements_client`):
reads through its channel and read token, operators' calls through its `AdminClient`.

Exit codes: 0 success; 1 the answer was "no" (check: not allowed, verify: differences found,
catalog check: mismatches); 2 usage or configuration error; 3 the service (or, for reconcile,
Clerk's API) could not be reached or refused the call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from tqdm import tqdm

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_client import AdminClient, ClientConfigError, Tls, connect
from entitlements_client.core import first_secret, metadata

DEV_ENV_FILE = Path(".data/dev.env")


class UsageError(Exception):
    """Bad arguments or missing configuration (exit code 2)."""


def setting(name: str, default: str | None = None) -> str | None:
    """From the environment, else from `.data/dev.env` written by `make run`."""
    if os.environ.get(name):
        return os.environ[name]
    if DEV_ENV_FILE.exists():
        for line in DEV_ENV_FILE.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == name and value.strip():
                return value.strip()
    return default


def _target(args: argparse.Namespace) -> str:
    return str(args.target or setting("ENTITLEMENTS_TARGET", "127.0.0.1:50051"))


def _tls() -> Tls | None:
    try:
        return Tls.from_env(os.environ)
    except ClientConfigError as exc:
        raise UsageError(str(exc)) from None


def _stub(args: argparse.Namespace) -> pb_grpc.EntitlementServiceStub:
    return pb_grpc.EntitlementServiceStub(connect(_target(args), _tls()))


def _read_auth() -> tuple[tuple[str, str], ...]:
    """The read token (the first of ENTITLEMENTS_READ_TOKEN) for EntitlementService calls."""
    return metadata(first_secret(setting("ENTITLEMENTS_READ_TOKEN")) or "")


def _print(message: Any, as_json: bool) -> None:
    if as_json:
        _dump_json(json_format.MessageToDict(message))
        return
    print(_human(message))


def _dump_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _human(message: Any) -> str:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    lines = []
    for key, value in data.items():
        if key == "limits" and isinstance(value, dict):
            for name, limit in sorted(value.items()):
                shown = "unlimited" if limit.get("unlimited") else limit.get("value", "0")
                lines.append(f"  {name:<20} {shown}")
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"{key:<22} {value}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    r = _stub(args).CanUse(
        pb.CanUseRequest(subject=args.subject, feature=args.feature),
        timeout=10,
        metadata=_read_auth(),
    )
    _print(r, args.json)
    return 0 if r.allowed else 1


def cmd_limits(args: argparse.Namespace) -> int:
    r = _stub(args).GetLimits(
        pb.GetLimitsRequest(subject=args.subject), timeout=10, metadata=_read_auth()
    )
    _print(r, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r = _stub(args).GetEntitlements(
        pb.GetEntitlementsRequest(subject=args.subject), timeout=10, metadata=_read_auth()
    )
    _print(r, args.json)
    return 0


def cmd_plans(args: argparse.Namespace) -> int:
    r = _stub(args).ListPlans(pb.ListPlansRequest(), timeout=10, metadata=_read_auth())
    if args.json:
        _print(r, True)
        return 0
    for plan in r.plans:
        limits = ", ".join(
            f"{k}={'unlimited' if v.unlimited else v.value}" for k, v in sorted(plan.limits.items())
        )
        default = " (default)" if plan.is_default else ""
        print(f"{plan.name}{default}  rank {plan.rank}  slugs: {', '.join(plan.clerk_slugs)}")
        print(f"    features: {', '.join(plan.features)}")
        print(f"    limits: {limits}")
    return 0


def _admin(args: argparse.Namespace) -> AdminClient:
    secret = first_secret(setting("BILLING_WEBHOOK_SYNC_SECRET"))
    if secret is None:
        raise UsageError("BILLING_WEBHOOK_SYNC_SECRET is not set (and no .data/dev.env)")
    return AdminClient(_target(args), secret=secret, tls=_tls())


def cmd_grant(args: argparse.Namespace) -> int:
    expires: datetime | None = None
    if args.expires:
        try:
            expires = datetime.fromisoformat(args.expires)
        except ValueError:
            raise UsageError(f"--expires: not an ISO 8601 time: {args.expires!r}") from None
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
    with _admin(args) as admin:
        _print(admin.grant(args.subject, args.plan, args.reason, expires), args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print(admin.revoke(args.grant_id, args.reason or ""), args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        r = admin.history(args.subject, args.limit)
    if args.json:
        _print(r, True)
        return 0
    for e in r.entries:
        when = e.recorded_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
        kind = sync_pb.HistoryKind.Name(e.kind).removeprefix("HISTORY_KIND_").lower()
        if e.kind == sync_pb.HISTORY_KIND_PLAN_CHANGE:
            detail = f"{e.from_plan} → {e.to_plan}  ({e.type} {e.event_id})"
        elif e.kind == sync_pb.HISTORY_KIND_GRANT:
            detail = f"{e.to_plan}  {e.event_id}  {e.note}"
        else:
            source = f"  [{e.source}]" if e.source and e.source != "webhook" else ""
            detail = f"{e.type}  {sync_pb.Outcome.Name(e.outcome)}  {e.event_id}{source}  {e.note}"
        print(f"{when}  {kind:<11} {detail}".rstrip())
    return 0


def _progress(args: argparse.Namespace, what: str) -> tqdm[Any]:
    """A progress bar on stderr: on a terminal, or always with --progress."""
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    return tqdm(desc=what, unit="", file=sys.stderr, disable=not show, dynamic_ncols=True)


def _stream(
    args: argparse.Namespace, what: str, messages: Iterable[Any], field: str = "results"
) -> tuple[list[Any], Any]:
    """Drain a streaming call, driving the progress bar; (all results, last message)."""
    results: list[Any] = []
    last: Any = None
    with _progress(args, what) as bar:
        for message in messages:
            if message.total and bar.total != message.total:
                bar.total = message.total
            bar.update(message.done - bar.n)
            results.extend(getattr(message, field, []))
            last = message
    return results, last


def _status_name(value: int) -> str:
    return sync_pb.ReconcileStatus.Name(value).removeprefix("RECONCILE_STATUS_").lower()  # type: ignore[arg-type]


def _as_dicts(messages: Sequence[Any]) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]


def cmd_reconcile(args: argparse.Namespace) -> int:
    if bool(args.subjects) == args.all:
        raise UsageError("give SUBJECT... or --all")
    with _admin(args) as admin:
        results, _ = _stream(
            args, "reconcile", admin.reconcile(args.subjects, all_subjects=args.all)
        )
    failed = [r for r in results if r.status == sync_pb.RECONCILE_STATUS_FAILED]
    if args.json:
        _dump_json({"results": _as_dicts(results), "failed": len(failed)})
    else:
        counts: dict[str, int] = {}
        for r in results:
            status = _status_name(r.status)
            counts[status] = counts.get(status, 0) + 1
            if r.status == sync_pb.RECONCILE_STATUS_IN_SYNC and args.all:
                continue
            plans = f"{r.previous_plan} → {r.plan}" if r.previous_plan != r.plan else r.plan
            print(f"{r.subject:<32} {status:<15} {plans:<16} {r.event_id}".rstrip())
            for line in [*r.differences, *([r.detail] if r.detail else [])]:
                print(f"    {line}")
        print("summary: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"))
    return 3 if failed else 0


def cmd_replay(args: argparse.Namespace) -> int:
    if sum((args.all, args.subject is not None, args.unparseable)) != 1:
        raise UsageError("choose one of --all, --subject SUBJECT or --unparseable")
    with _admin(args) as admin:
        calls = admin.replay(
            all_deliveries=args.all, subject=args.subject or "", unparseable=args.unparseable
        )
        results, _ = _stream(args, "replay", calls)
    changed = [r for r in results if r.changed]
    if args.json:
        _dump_json(
            {"results": _as_dicts(results), "replayed": len(results), "changed": len(changed)}
        )
        return 0
    for r in results:
        before, after = sync_pb.Outcome.Name(r.previous_outcome), sync_pb.Outcome.Name(r.outcome)
        if not r.changed and before == after:
            continue
        plans = f"  {r.previous_plan} → {r.plan}" if r.changed else ""
        print(f"{r.event_id}  {r.type}  {r.subject}  {before} → {after}{plans}  {r.note}".rstrip())
    print(f"replayed {len(results)} deliveries; {len(changed)} changed stored state")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        differences, last = _stream(args, "verify", admin.verify(), field="differences")
    if last is None or not last.finished:
        print("error: verification ended without a result", file=sys.stderr)
        return 3
    if args.json:
        _dump_json(
            {
                "subjects_checked": last.subjects_checked,
                "deliveries_replayed": last.done,
                "differences": _as_dicts(differences),
            }
        )
    else:
        for d in differences:
            print(f"{d.subject:<32} {d.description}")
        print(
            f"rebuilt {last.subjects_checked} subjects from {last.done} stored deliveries: "
            + (f"{len(differences)} differences" if differences else "no differences")
        )
    return 1 if differences else 0


def cmd_catalog_check(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        r = admin.check_catalog()
    if args.json:
        _print(r, True)
    else:
        print(f"{r.clerk_plans} plans at Clerk")
        for p in r.unmapped_clerk_plans:
            print(f"not in the catalog (resolves to the default plan): {p.slug} ({p.id}, {p.name})")
        for slug in r.unknown_catalog_slugs:
            print(f"in the catalog but not at Clerk: {slug}")
        if not r.unmapped_clerk_plans and not r.unknown_catalog_slugs:
            print("catalog and Clerk agree")
    return 1 if r.unmapped_clerk_plans or r.unknown_catalog_slugs else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entitlements", description=__doc__)
    parser.add_argument("--target", help="service host:port (default ENTITLEMENTS_TARGET)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on long runs (default: when stderr is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="may SUBJECT use FEATURE? (exit 1 when not)")
    p.add_argument("subject")
    p.add_argument("feature")
    p.set_defaults(func=cmd_check)
    for name, func, text in (
        ("limits", cmd_limits, "SUBJECT's plan and limits"),
        ("show", cmd_show, "everything resolved for SUBJECT"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("subject")
        p.set_defaults(func=func)
    sub.add_parser("plans", help="the plan catalog").set_defaults(func=cmd_plans)
    p = sub.add_parser("grant", help="give SUBJECT a plan (needs the sync secret)")
    p.add_argument("subject")
    p.add_argument("plan")
    p.add_argument("--reason", required=True)
    p.add_argument("--expires", help="ISO 8601 time (default: until revoked)")
    p.set_defaults(func=cmd_grant)
    p = sub.add_parser("revoke", help="end a grant (needs the sync secret)")
    p.add_argument("grant_id")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_revoke)
    p = sub.add_parser("history", help="SUBJECT's deliveries, grants and plan changes")
    p.add_argument("subject")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("reconcile", help="compare with Clerk's Backend API and repair")
    p.add_argument("subjects", nargs="*", metavar="SUBJECT")
    p.add_argument("--all", action="store_true", help="every known subject")
    p.set_defaults(func=cmd_reconcile)
    p = sub.add_parser("replay", help="re-apply stored deliveries with the current parser")
    p.add_argument("--all", action="store_true", help="every stored delivery")
    p.add_argument("--subject", help="one subject's deliveries")
    p.add_argument("--unparseable", action="store_true", help="those stored UNPARSEABLE")
    p.set_defaults(func=cmd_replay)
    sub.add_parser(
        "verify", help="rebuild state from the stored log and compare (exit 1 on differences)"
    ).set_defaults(func=cmd_verify)
    p = sub.add_parser("catalog", help="catalog commands")
    catalog = p.add_subparsers(dest="catalog_command", required=True)
    catalog.add_parser(
        "check", help="Clerk plans the catalog does not map, and catalog slugs Clerk lacks"
    ).set_defaults(func=cmd_catalog_check)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except grpc.RpcError as exc:
        status = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        name = status.name if status is not None else "ERROR"
        print(f"error: {name}: {details}", file=sys.stderr)
        usage = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        code = 2 if status in usage else 3
    sys.exit(code)
