"""`entitlements status`: what an operator looks at first. The service's health, the identity
of the change log and the catalog fingerprint its streams carry, and the Clerk plans the
catalog lacks that deliveries named in the window (ENTITLEMENTS_UNKNOWN_PLAN): a paying
customer on such a plan got the default plan (`default`) or was held back (`keep`).

Exit 0 when serving and no unknown plan was seen; 1 when something needs a look (not serving,
or an unknown plan seen in the window)."""

from __future__ import annotations

import argparse

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import billing_sync_service_pb2_grpc as sync_grpc
from entitlements_cli.errors import UsageError
from entitlements_cli.output import print_message, when
from entitlements_cli.settings import sync_secret, target, tls
from entitlements_client import connect


def _yes(flag: bool, yes: str, no: str) -> str:
    return yes if flag else no


def cmd_status(args: argparse.Namespace) -> int:
    if args.hours is not None and args.hours <= 0:
        raise UsageError("--hours must be a positive number of hours")
    auth = (("authorization", f"Bearer {sync_secret()}"),)
    with connect(target(args), tls()) as channel:
        r = sync_grpc.BillingSyncServiceStub(channel).GetServiceStatus(
            sync_pb.GetServiceStatusRequest(window_hours=args.hours or 0),
            timeout=10,
            metadata=auth,
        )
    attention = not r.serving or bool(r.unknown_plans)
    if args.json:
        print_message(r, True)
        return 1 if attention else 0
    print(f"{'health':<22} {_yes(r.serving, 'SERVING', 'NOT_SERVING (database unreachable)')}")
    print(f"{'change feed':<22} {_yes(r.change_feed_following, 'following', 'starting')}")
    print(f"{'change listener':<22} {_yes(r.listening, 'connected', 'not connected')}")
    print(f"{'log identity':<22} {r.log_id or '(unknown)'}")
    print(f"{'catalog fingerprint':<22} {r.catalog_fingerprint}")
    print(f"{'unknown plan policy':<22} {r.unknown_plan_policy} (ENTITLEMENTS_UNKNOWN_PLAN)")
    print(f"{'server time':<22} {when(r, 'server_time')} UTC")
    more = " (at least: more than were read)" if r.unknown_plans_truncated else ""
    if not r.unknown_plans:
        print(f"unknown plan slugs in the last {r.window_hours} h: none")
        return 1 if attention else 0
    print(f"unknown plan slugs in the last {r.window_hours} h{more}:")
    print(f"  {'slug':<20} {'plan id':<22} {'deliveries':>10}  {'last seen':<19}  example subject")
    for s in r.unknown_plans:
        print(
            f"  {s.slug:<20} {s.plan_id:<22} {s.deliveries:>10}  {when(s, 'last_seen')}  "
            f"{s.example_subject}"
        )
        print(f"      {s.note}")
    print("then: map each slug in the catalog (ENTITLEMENTS_CATALOG), restart, and")
    print("      `entitlements replay --subject SUBJECT` (`entitlements history SUBJECT` shows it)")
    return 1
