"""A small client for Clerk's Backend API: the payer's subscription and the plan list.

Polite by construction: a `429` pauses every request of this client until its `Retry-After`
has passed, transient failures (5xx, connection errors, timeouts) are retried with backoff,
and at most `concurrency` requests are in flight.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from service.application.ports import ClerkApiError
from service.domain.reconcile import SubjectKind, clerk_kind

__all__ = ["ClerkApi", "ClerkApiError", "ClerkApiSettings"]

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.clerk.com/v1"
MAX_RETRY_AFTER_SECONDS = 60.0
PLANS_PAGE = 100
# A subscription or a page of plans is a few kB; a larger answer is refused, never buffered.
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ClerkApiSettings:
    secret_key: str
    base_url: str = DEFAULT_API_URL
    timeout_seconds: float = 10.0
    max_attempts: int = 5
    concurrency: int = 4
    backoff_seconds: float = 0.5
    # After this many failed requests in a row (5xx, connection errors, timeouts) or one
    # refused key, the client stops asking for the rest of its life: a reconciliation pass
    # does not hammer an API that is down, and the remaining subjects are reported FAILED.
    give_up_after: int = 20


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ClerkApi:
    """Use as `async with ClerkApi(settings) as api:`."""

    def __init__(self, settings: ClerkApiSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._paused_until = 0.0
        self.requests = 0
        self.rate_limited = 0
        self._failures_in_a_row = 0
        self._last_failure = ""

    async def __aenter__(self) -> ClerkApi:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._settings.secret_key}"},
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def subscription(self, subject: str) -> Mapping[str, Any] | None:
        """The payer's subscription; None when Clerk has none (404)."""
        kind = clerk_kind(subject)
        if kind is None:
            raise ClerkApiError(
                f"{subject!r} is not a Clerk user or organization id", retryable=False
            )
        collection = "organizations" if kind is SubjectKind.ORGANIZATION else "users"
        return await self._get(f"/{collection}/{quote(subject, safe='')}/billing/subscription", {})

    async def plans(self) -> list[Mapping[str, Any]]:
        """Every billing plan of the instance (paged)."""
        plans: list[Mapping[str, Any]] = []
        while True:
            page = await self._get("/billing/plans", {"limit": PLANS_PAGE, "offset": len(plans)})
            if page is None:
                raise ClerkApiError("/billing/plans: not found", retryable=False)
            data = page.get("data")
            if not isinstance(data, list):
                raise ClerkApiError("/billing/plans: no `data` list", retryable=False)
            plans += [p for p in data if isinstance(p, dict)]
            total = page.get("total_count")
            if not data or not isinstance(total, int) or len(plans) >= total:
                return plans

    async def _get(self, path: str, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        assert self._session is not None, "use ClerkApi as an async context manager"
        url = self._settings.base_url.rstrip("/") + path
        problem = "no attempt"
        for attempt in range(1, self._settings.max_attempts + 1):
            async with self._slots:
                await self._wait_out_pause()
                self._check_not_given_up()
                self.requests += 1
                try:
                    async with self._session.get(url, params=dict(params)) as response:
                        status = response.status
                        if status in (200, 404):
                            self._failures_in_a_row = 0
                        if status == 200:
                            body = await _bounded_json(response, path)
                            if not isinstance(body, dict):
                                raise ClerkApiError(f"{path}: not a JSON object", retryable=False)
                            return body
                        if status == 404:
                            return None
                        if status == 429:
                            # Counts toward giving up: an API that only ever answers 429
                            # must not hold a pass (and its subjects) for ever.
                            self.rate_limited += 1
                            wait = retry_after_seconds(response.headers.get("Retry-After"))
                            self._pause(wait if wait is not None else self._backoff(attempt))
                            self._failed("rate limited (429)")
                            problem = "rate limited (429)"
                            continue
                        if status in (401, 403):
                            self._failed(f"HTTP {status}", refused=True)
                            raise ClerkApiError(
                                f"{path}: {status}: check CLERK_SECRET_KEY",
                                retryable=False,
                            )
                        if status < 500:
                            raise ClerkApiError(f"{path}: HTTP {status}", retryable=False)
                        problem = f"HTTP {status}"
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    problem = type(exc).__name__
                self._failed(problem)
            if attempt < self._settings.max_attempts:
                await asyncio.sleep(self._backoff(attempt))
        raise ClerkApiError(
            f"{path}: {problem} after {self._settings.max_attempts} attempts", retryable=True
        )

    def _failed(self, problem: str, *, refused: bool = False) -> None:
        """Count a failed request toward `give_up_after` (a refused key counts for all)."""
        self._failures_in_a_row += self._settings.give_up_after if refused else 1
        self._last_failure = problem

    def _check_not_given_up(self) -> None:
        if self._failures_in_a_row >= self._settings.give_up_after:
            raise ClerkApiError(
                f"not asked: Clerk's API keeps failing (last: {self._last_failure})",
                retryable=True,
            )

    def _backoff(self, attempt: int) -> float:
        base = self._settings.backoff_seconds * 2 ** (attempt - 1)
        return float(min(base, 30.0) * (0.5 + random.random() / 2))

    def _pause(self, seconds: float) -> None:
        seconds = min(seconds, MAX_RETRY_AFTER_SECONDS)
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        log.warning("Clerk API rate limit: pausing requests for %.1f s", seconds)

    async def _wait_out_pause(self) -> None:
        while True:  # another 429 may extend the pause while this one sleeps
            delay = self._paused_until - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)


async def _bounded_json(response: aiohttp.ClientResponse, path: str) -> Any:
    """The body as JSON, read up to MAX_BODY_BYTES (a larger answer is an error)."""
    declared = response.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise ClerkApiError(f"{path}: answer larger than {MAX_BODY_BYTES} bytes", retryable=False)
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ClerkApiError(
                f"{path}: answer larger than {MAX_BODY_BYTES} bytes", retryable=False
            )
        chunks.append(chunk)
    return json.loads(b"".join(chunks))
