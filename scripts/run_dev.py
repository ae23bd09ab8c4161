"""`make run`: the service with a development secret, on an embedded PostgreSQL unless
DATABASE_URL is set. Ctrl-C stops everything."""

from __future__ import annotations

import os
import secrets
import sys


def main() -> None:
    env = dict(os.environ)
    if not env.get("BILLING_WEBHOOK_SYNC_SECRET"):
        env["BILLING_WEBHOOK_SYNC_SECRET"] = "dev_" + secrets.token_urlsafe(32)
        print(
            "generated a development BILLING_WEBHOOK_SYNC_SECRET for this run:\n"
            f"  export BILLING_WEBHOOK_SYNC_SECRET={env['BILLING_WEBHOOK_SYNC_SECRET']}",
            flush=True,
        )
    listen = env.setdefault("ENTITLEMENTS_LISTEN", "127.0.0.1:50051")
    database = "DATABASE_URL" if env.get("DATABASE_URL") else "embedded PostgreSQL under .data/"
    print(
        f"service: grpc://{listen}  (try: grpcurl -plaintext {listen} list)\ndatabase: {database}",
        flush=True,
    )
    exe = os.path.join(os.path.dirname(sys.executable), "entitlements-service")
    os.execve(exe, [exe], env)


if __name__ == "__main__":
    main()
