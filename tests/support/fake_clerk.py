"""A fake of Clerk's Backend API (the billing part), served by aiohttp on loopback.

Tests set subscriptions and plans, queue scripted answers (429 with Retry-After, 5xx) and
read back every request it saw, with its time, so politeness can be checked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SECRET_KEY = "sk_test_fake_clerk_backend_key_0123456789"


@dataclass
class SeenRequest:
    at: float  # time.monotonic()
    path: str
    authorized: bool


@dataclass
class FakeClerk:
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: list[dict[str, Any]] = field(default_factory=list)
    # (status, headers) answered, in order, before the real answer of the next requests.
    scripted: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: list[SeenRequest] = field(default_factory=list)
    url: str = ""

    def subscription_for(
        self, subject: str, items: list[dict[str, Any]], updated_at: int
    ) -> dict[str, Any]:
        """Store what the API answers for `subject` (Backend API shape: `subscription_items`)."""
        key = "organization_id" if subject.startswith("org_") else "user_id"
        subscription = {
            "object": "commerce_subscription",
            "id": f"csub_{subject}",
            "status": "active",
            "payer_id": f"cpayer_{subject}",
            "payer": {"object": "commerce_payer", key: subject, "email": "ada@example.com"},
            "updated_at": updated_at,
            "subscription_items": items,
        }
        self.subscriptions[subject] = subscription
        return subscription

    def requests_to(self, path_part: str) -> list[SeenRequest]:
        return [r for r in self.seen if path_part in r.path]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/users/{id}/billing/subscription", self._subscription)
        app.router.add_get("/v1/organizations/{id}/billing/subscription", self._subscription)
        app.router.add_get("/v1/billing/plans", self._plans)
        return app

    def _record(self, request: web.Request) -> web.Response | None:
        authorized = request.headers.get("Authorization") == f"Bearer {SECRET_KEY}"
        self.seen.append(SeenRequest(time.monotonic(), request.path, authorized))
        if not authorized:
            return web.json_response({"errors": [{"code": "authentication_invalid"}]}, status=401)
        if self.scripted:
            status, headers = self.scripted.pop(0)
            return web.json_response(
                {"errors": [{"code": "scripted"}]}, status=status, headers=headers
            )
        return None

    async def _subscription(self, request: web.Request) -> web.Response:
        if (early := self._record(request)) is not None:
            return early
        found = self.subscriptions.get(request.match_info["id"])
        if found is None:
            return web.json_response({"errors": [{"code": "resource_not_found"}]}, status=404)
        return web.json_response(found)

    async def _plans(self, request: web.Request) -> web.Response:
        if (early := self._record(request)) is not None:
            return early
        limit = int(request.query.get("limit", "10"))
        offset = int(request.query.get("offset", "0"))
        page = self.plans[offset : offset + limit]
        return web.json_response({"data": page, "total_count": len(self.plans)})


@asynccontextmanager
async def serving(fake: FakeClerk) -> AsyncIterator[FakeClerk]:
    """Serve `fake` on 127.0.0.1 (a free port) in this event loop."""
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


@contextmanager
def serving_in_thread(fake: FakeClerk) -> Iterator[FakeClerk]:
    """Serve `fake` from a background thread (for tests that drive real processes)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        async with serving(fake):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("fake Clerk API did not start")
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def plan(slug: str, plan_id: str, name: str) -> dict[str, Any]:
    return {"object": "commerce_plan", "id": plan_id, "slug": slug, "name": name}
