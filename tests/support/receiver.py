"""A real webhook receiver for the notification tests: an aiohttp server on port 0 in its own
thread, answering what the test says (200, 503, 410, slowly) and recording every request."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    message_id: str
    headers: dict[str, str]
    body: str
    answered: int
    at: float  # time.monotonic() when it arrived

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)["data"]
        return data


class Receiver:
    def __init__(self) -> None:
        self.status = 200
        self.delay_seconds = 0.0
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/entitlements"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        status, delay = self.status, self.delay_seconds
        if delay:
            await asyncio.sleep(delay)
        if request.transport is None or request.transport.is_closing():
            # The sender is gone (killed, or timed out): no answer reaches it, so this is no
            # delivery; it is not recorded.
            return web.Response(status=status)
        with self._lock:
            self.requests.append(
                Received(
                    request.headers.get("webhook-id", ""),
                    {k.lower(): v for k, v in request.headers.items()},
                    body,
                    status,
                    time.monotonic(),
                )
            )
        return web.Response(status=status)

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def latest(self, subject: str) -> dict[str, Any] | None:
        mine = [r.data for r in self.accepted() if r.data["subject"] == subject]
        return mine[-1] if mine else None

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: condition not met in {timeout} s")
            time.sleep(0.05)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/entitlements", receiver._handle)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner = web.AppRunner(app, handle_signals=False)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
