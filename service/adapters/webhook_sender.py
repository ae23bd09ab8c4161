"""POSTing one change notification, signed per Standard Webhooks with the `svix` library.

Each endpoint has its own session (its own connection pool), so one endpoint's slow answers
never hold connections another needs. With several secrets (a rotation) every attempt carries
one signature per secret; receivers accept any they know."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
from svix.webhooks import Webhook

from service.application.notify_delivery import Attempt

USER_AGENT = "entitlements-service-notifier/1"


def signed_headers(
    webhooks: Sequence[Webhook], message_id: str, body: str, now: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for one attempt (signed afresh: the timestamp is now)."""
    now = now or datetime.now(UTC)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(w.sign(message_id, now, body) for w in webhooks),
    }


class WebhookSender:
    def __init__(self, url: str, secrets: Sequence[str], timeout_seconds: float) -> None:
        self.url = url
        self._webhooks = [Webhook(s) for s in secrets]
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=32),
                auto_decompress=False,
            )
        return self._session

    async def send(self, message_id: str, body: str) -> Attempt:
        headers = signed_headers(self._webhooks, message_id, body)
        try:
            async with self._open().post(
                self.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                await response.content.readany()  # a bounded read: the answer is not used
                return Attempt(response.status)
        except TimeoutError:
            return Attempt(None, "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(None, type(exc).__name__)
        except asyncio.CancelledError:
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
