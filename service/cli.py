"""`entitlements`: the operator CLI (talks gRPC to ENTITLEMENTS_TARGET).

Exit codes: 0 success; 1 the answer was "no" (check: not allowed, verify: differences found,
catalog check: mismatches); 2 usage or configuration error; 3 the service (or, for reconcile,
Clerk's API) could not be reached or refused the call.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from svix.webhooks import Webhook
from tqdm import tqdm

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_common.settings import bearer, split_secrets
from entitlements_common.tls import ClientTls, sync_channel

DEV_ENV_FILE = Path(".data/dev.env")


class UsageError(Exception):
    """Bad arguments or missing configuration (exit code 2)."""


DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080/api/webhooks/clerk-billing"


def _env(name: str, default: str | None = None) -> str | None:
    """From the environment, else from `.data/dev.env` written by `make run`."""
    if os.environ.get(name):
        return os.environ[name]
    if DEV_ENV_FILE.exists():
        for line in DEV_ENV_FILE.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == name and value.strip():
                return value.strip()
    return default


def _stub(args: argparse.Namespace) -> pb_grpc.EntitlementServiceStub:
    target = args.target or _env("ENTITLEMENTS_TARGET", "127.0.0.1:50051")
    return pb_grpc.EntitlementServiceStub(sync_channel(str(target), ClientTls.from_env(os.environ)))


def _read_auth() -> tuple[tuple[str, str], ...]:
    """The read token (the first of ENTITLEMENTS_READ_TOKEN) for EntitlementService calls."""
    return bearer(_env("ENTITLEMENTS_READ_TOKEN"))


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


def _sync_stub(args: argparse.Namespace) -> tuple[sync_grpc.BillingSyncServiceStub, Any]:
    auth = bearer(_env("BILLING_WEBHOOK_SYNC_SECRET"))
    if not auth:
        raise UsageError("BILLING_WEBHOOK_SYNC_SECRET is not set (and no .data/dev.env)")
    target = args.target or _env("ENTITLEMENTS_TARGET", "127.0.0.1:50051")
    channel = sync_channel(str(target), ClientTls.from_env(os.environ))
    return sync_grpc.BillingSyncServiceStub(channel), auth


def cmd_grant(args: argparse.Namespace) -> int:
    stub, auth = _sync_stub(args)
    request = sync_pb.GrantPlanRequest(subject=args.subject, plan=args.plan, reason=args.reason)
    if args.expires:
        try:
            when = datetime.fromisoformat(args.expires)
        except ValueError:
            raise UsageError(f"--expires: not an ISO 8601 time: {args.expires!r}") from None
        request.expires_at.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
    _print(stub.GrantPlan(request, metadata=auth, timeout=10), args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    stub, auth = _sync_stub(args)
    request = sync_pb.RevokeGrantRequest(grant_id=args.grant_id, reason=args.reason or "")
    _print(stub.RevokeGrant(request, metadata=auth, timeout=10), args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    stub, auth = _sync_stub(args)
    r = stub.GetSubjectHistory(
        sync_pb.GetSubjectHistoryRequest(subject=args.subject, page_size=args.limit),
        metadata=auth,
        timeout=10,
    )
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
    stub, auth = _sync_stub(args)
    request = sync_pb.ReconcileRequest(subjects=args.subjects, all=args.all)
    results, _ = _stream(args, "reconcile", stub.Reconcile(request, metadata=auth))
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
    stub, auth = _sync_stub(args)
    request = sync_pb.ReplayDeliveriesRequest(
        all=args.all, subject=args.subject or "", unparseable=args.unparseable
    )
    results, _ = _stream(args, "replay", stub.ReplayDeliveries(request, metadata=auth))
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
    stub, auth = _sync_stub(args)
    call = stub.VerifyState(sync_pb.VerifyStateRequest(), metadata=auth)
    differences, last = _stream(args, "verify", call, field="differences")
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
    stub, auth = _sync_stub(args)
    r = stub.CheckCatalog(sync_pb.CheckCatalogRequest(), metadata=auth, timeout=120)
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


def demo_payload(subject: str, now_ms: int) -> dict[str, Any]:
    """A realistic `subscriptionItem.active` for the pro plan (monthly)."""
    return {
        "data": {
            "id": f"subi_demo_{subject}",
            "object": "commerce_subscription_item",
            "status": "active",
            "plan_period": "month",
            "period_start": now_ms,
            "period_end": now_ms + 30 * 86_400_000,
            "is_free_trial": False,
            "plan_id": "cplan_demo_pro",
            "plan": {"id": "cplan_demo_pro", "slug": "pro", "name": "Pro", "is_default": False},
            "payer": {"id": "cpayer_demo", "object": "commerce_payer", "user_id": subject},
            "created_at": now_ms,
            "updated_at": now_ms,
        },
        "object": "event",
        "type": "subscriptionItem.active",
        "timestamp": now_ms,
        "instance_id": "ins_demo",
    }


def cmd_demo_webhook(args: argparse.Namespace) -> int:
    secret_list = _env("CLERK_WEBHOOK_SIGNING_SECRET") or _env("CLERK_WEBHOOK_SECRET")
    if not secret_list:
        print("CLERK_WEBHOOK_SIGNING_SECRET is not set (and no .data/dev.env)", file=sys.stderr)
        return 2
    secret = split_secrets(secret_list)[0]
    url = args.url or _env("GATEWAY_URL", DEFAULT_GATEWAY_URL)
    body = json.dumps(demo_payload(args.subject, int(time.time() * 1000)))
    msg_id = "msg_demo_" + secrets.token_hex(8)
    now = datetime.now(UTC)
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    request = urllib.request.Request(str(url), data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            answer = response.read().decode()
            print(f"POST {url} → {response.status} {answer}")
    except urllib.error.HTTPError as exc:
        print(f"POST {url} → {exc.code} {exc.read().decode()}", file=sys.stderr)
        return 3
    except urllib.error.URLError as exc:
        print(f"cannot reach the gateway at {url}: {exc.reason}", file=sys.stderr)
        return 3
    r = _stub(args).CanUse(
        pb.CanUseRequest(subject=args.subject, feature="advancedAnalytics"), timeout=10
    )
    print(f"CanUse({args.subject}, advancedAnalytics) → allowed={r.allowed} plan={r.plan}")
    return 0


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
    p = sub.add_parser("demo-webhook", help="send a signed sample pro activation to the gateway")
    p.add_argument("--subject", default="user_demo")
    p.add_argument("--url", help=f"webhook URL (default GATEWAY_URL or {DEFAULT_GATEWAY_URL})")
    p.set_defaults(func=cmd_demo_webhook)
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
