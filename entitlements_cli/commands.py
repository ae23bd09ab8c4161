"""The CLI's commands: each takes the parsed arguments, prints its answer and returns the exit
code (0 success; 1 the answer was "no"). Errors are raised (`CliError`, `grpc.RpcError`) and
reported by `main`. The service checks every value it is sent (and refuses, changing nothing):
the CLI checks only what its flags alone can get wrong."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements_cli.errors import CliError, UsageError
from entitlements_cli.output import dump_json, print_message, to_dicts, when
from entitlements_cli.rpc import Operator, read_stub, usage_stub
from entitlements_cli.settings import read_auth

INT64_MAX = 2**63 - 1
_stub = read_stub
_usage_stub = usage_stub


def cmd_check(args: argparse.Namespace) -> int:
    r = _stub(args).CanUse(
        pb.CanUseRequest(subject=args.subject, feature=args.feature),
        timeout=10,
        metadata=read_auth(),
    )
    print_message(r, args.json)
    return 0 if r.allowed else 1


def cmd_limits(args: argparse.Namespace) -> int:
    r = _stub(args).GetLimits(
        pb.GetLimitsRequest(subject=args.subject), timeout=10, metadata=read_auth()
    )
    print_message(r, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    r = _stub(args).GetEntitlements(
        pb.GetEntitlementsRequest(subject=args.subject), timeout=10, metadata=read_auth()
    )
    print_message(r, args.json)
    return 0


def cmd_plans(args: argparse.Namespace) -> int:
    r = _stub(args).ListPlans(pb.ListPlansRequest(), timeout=10, metadata=read_auth())
    if args.json:
        print_message(r, True)
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


def cmd_usage(args: argparse.Namespace) -> int:
    r = _usage_stub(args).GetUsage(
        usage_pb.GetUsageRequest(subject=args.subject), timeout=10, metadata=read_auth()
    )
    if args.json:
        print_message(r, True)
        return 0
    print(f"{'limit':<24} {'used':>10} {'reserved':>10} {'remaining':>10}  resets at")
    for u in r.usage:
        remaining = "unlimited" if u.unlimited else str(u.remaining)
        resets = when(u, "resets_at") or "never"
        print(f"{u.limit:<24} {u.used:>10} {u.reserved:>10} {remaining:>10}  {resets}")
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    """Exit 0 when recorded, 1 when it did not fit (nothing recorded). The key is printed
    (not under --json, which is the response as grpcurl prints it): retry with `--key` it."""
    try:
        request = usage_pb.ConsumeRequest(
            subject=args.subject,
            limit=args.limit,
            amount=args.amount,
            idempotency_key=uuid.uuid4().hex if args.key is None else args.key,
        )
    except ValueError:  # beyond int64: the service is never asked
        raise UsageError(f"amount must be 1 to {INT64_MAX}, got {args.amount}") from None
    r = _usage_stub(args).Consume(request, timeout=10, metadata=read_auth())
    print_message(r, args.json)
    if not args.json:
        print(f"{'idempotency_key':<22} {request.idempotency_key}")
    return 0 if r.allowed else 1


def _admin(args: argparse.Namespace) -> Operator:
    return Operator(args)


def _time(flag: str, text: str | None) -> datetime | None:
    """An ISO 8601 time given on the command line (no zone: UTC)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag}: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_override_flags(args: argparse.Namespace) -> None:
    """The flags' own words for what the service would refuse (argparse cannot say "--on or
    --off with --feature only")."""
    if args.feature is not None:
        if args.enabled is None:
            raise UsageError("--feature needs --on (grant it) or --off (withhold it)")
        if args.value is not None or args.unlimited:
            raise UsageError("--value and --unlimited go with --limit, not --feature")
    else:
        if args.enabled is not None:
            raise UsageError("--on and --off go with --feature, not --limit")
        if args.value is None and not args.unlimited:
            raise UsageError("--limit needs --value N or --unlimited")


def cmd_override_set(args: argparse.Namespace) -> int:
    _check_override_flags(args)
    expires = _time("--expires-at", args.expires_at)
    request = sync_pb.SetOverrideRequest(subject=args.subject, reason=args.reason)
    if args.feature is not None:
        request.feature, request.enabled = args.feature, args.enabled
    else:
        request.limit, request.unlimited = args.limit, args.unlimited
        if not 0 <= (args.value or 0) <= INT64_MAX:  # the service says so below int64
            raise UsageError(f"--value must be 0 to {INT64_MAX}, got {args.value}")
        request.value = args.value or 0
    if expires is not None:
        request.expires_at.FromDatetime(expires)
    with _admin(args) as admin:
        print_message(admin.set_override(request), args.json)
    return 0


def cmd_override_remove(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        print_message(admin.remove_override(args.override_id, args.reason or ""), args.json)
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    expires = _time("--expires", args.expires)
    with _admin(args) as admin:
        print_message(admin.grant(args.subject, args.plan, args.reason, expires), args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        print_message(admin.revoke(args.grant_id, args.reason or ""), args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        r = admin.history(args.subject, args.limit)
    if args.json:
        print_message(r, True)
        return 0
    for e in r.entries:
        when = e.recorded_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
        kind = sync_pb.HistoryKind.Name(e.kind).removeprefix("HISTORY_KIND_").lower()
        if e.kind == sync_pb.HISTORY_KIND_PLAN_CHANGE:
            detail = f"{e.from_plan} → {e.to_plan}  ({e.type} {e.event_id})"
        elif e.kind == sync_pb.HISTORY_KIND_GRANT:
            detail = f"{e.to_plan}  {e.event_id}  {e.note}"
        elif e.kind == sync_pb.HISTORY_KIND_OVERRIDE:
            detail = f"{e.event_id}  {e.note}"
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


def cmd_reconcile(args: argparse.Namespace) -> int:
    if bool(args.subjects) == args.all:
        raise UsageError("give SUBJECT... or --all")
    with _admin(args) as admin:
        results, _ = _stream(args, "reconcile", admin.reconcile(args.subjects, args.all))
    failed = [r for r in results if r.status == sync_pb.RECONCILE_STATUS_FAILED]
    if args.json:
        dump_json({"results": to_dicts(results), "failed": len(failed)})
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
        calls = admin.replay(args.all, args.subject or "", args.unparseable)
        results, _ = _stream(args, "replay", calls)
    changed = [r for r in results if r.changed]
    if args.json:
        dump_json({"results": to_dicts(results), "replayed": len(results), "changed": len(changed)})
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
        raise CliError("verification ended without a result", code="UNKNOWN")
    if args.json:
        dump_json(
            {
                "subjects_checked": last.subjects_checked,
                "deliveries_replayed": last.done,
                "differences": to_dicts(differences),
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
        print_message(r, True)
    else:
        print(f"{r.clerk_plans} plans at Clerk")
        for p in r.unmapped_clerk_plans:
            print(f"not in the catalog (resolves to the default plan): {p.slug} ({p.id}, {p.name})")
        for slug in r.unknown_catalog_slugs:
            print(f"in the catalog but not at Clerk: {slug}")
        if not r.unmapped_clerk_plans and not r.unknown_catalog_slugs:
            print("catalog and Clerk agree")
    return 1 if r.unmapped_clerk_plans or r.unknown_catalog_slugs else 0
