"""`make demo`: send a signed sample `subscriptionItem.active` (pro, monthly) to the gateway of
a running `make run`, then ask the service what the subject may do.

A development script, not part of the CLI: it signs with the webhook signing secret, which an
operator's machine should not hold.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import entitlement_service_pb2_grpc as pb_grpc
from entitlements_cli.settings import dev_env_file, setting
from entitlements_client import connect
from entitlements_common.settings import split_secrets

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080/api/webhooks/clerk-billing"


def demo_payload(subject: str, now_ms: int, slug: str = "pro") -> dict[str, Any]:
    """A realistic `subscriptionItem.active` for the pro plan (monthly), or for the Clerk plan
    `slug` (say one the catalog lacks, to see what `entitlements status` shows)."""
    plan_id = "cplan_demo_" + slug
    return {
        "data": {
            "id": f"subi_demo_{subject}",
            "object": "commerce_subscription_item",
            "status": "active",
            "plan_period": "month",
            "period_start": now_ms,
            "period_end": now_ms + 30 * 86_400_000,
            "is_free_trial": False,
            "plan_id": plan_id,
            "plan": {"id": plan_id, "slug": slug, "name": slug.title(), "is_default": False},
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
    secret_list = setting("CLERK_WEBHOOK_SIGNING_SECRET") or setting("CLERK_WEBHOOK_SECRET")
    if not secret_list:
        print(f"CLERK_WEBHOOK_SIGNING_SECRET is not set (and no {dev_env_file()})", file=sys.stderr)
        return 2
    secret = split_secrets(secret_list)[0]
    url = args.url or setting("GATEWAY_URL", DEFAULT_GATEWAY_URL)
    body = json.dumps(demo_payload(args.subject, int(time.time() * 1000), args.plan_slug))
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
    target = str(args.target or setting("ENTITLEMENTS_TARGET", "127.0.0.1:50051"))
    r = pb_grpc.EntitlementServiceStub(connect(target)).CanUse(
        pb.CanUseRequest(subject=args.subject, feature="advancedAnalytics"), timeout=10
    )
    print(f"CanUse({args.subject}, advancedAnalytics) → allowed={r.allowed} plan={r.plan}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="send_demo_webhook", description=__doc__)
    parser.add_argument("--subject", default="user_demo")
    parser.add_argument("--plan-slug", default="pro", help="the Clerk plan's slug (default pro)")
    parser.add_argument("--url", help=f"webhook URL (default GATEWAY_URL or {DEFAULT_GATEWAY_URL})")
    parser.add_argument("--target", help="service host:port (default ENTITLEMENTS_TARGET)")
    return cmd_demo_webhook(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
