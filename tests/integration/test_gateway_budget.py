"""The body budget's failure paths through a real aiohttp server on port 0 (in-process, so the
budget can be read): over budget is 503 without reading; the reservation is given back after
an answer, a timeout and a client that disconnects; refusals are counted exactly but logged
as a handful of lines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import aiohttp
import pytest
from aiohttp import web

from tests.support.stack import new_signing_secret
from webhook_gateway.app import BUDGET, METRICS, SERVER_OPTIONS, WEBHOOK_PATH, create_app
from webhook_gateway.budget import BodyBudget
from webhook_gateway.config import GatewaySettings

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
HELD = MIB - 4096  # three of these (and their overhead) fill the large share
UNSIGNED = b"svix-id: msg_1\r\nsvix-timestamp: 1\r\nsvix-signature: v1,AAAA\r\n"


@dataclass
class Gateway:
    app: web.Application
    port: int

    @property
    def budget(self) -> BodyBudget:
        return self.app[BUDGET]

    def counted(self, reason: str) -> float:
        value = self.app[METRICS].registry.get_sample_value(
            "webhook_verification_failures_total", {"reason": reason}
        )
        return value or 0.0


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        target="127.0.0.1:1",  # never reached: nothing here is correctly signed
        signing_secrets=(new_signing_secret(),),
        sync_secret="s" * 32,
        max_body_bytes=MIB,
        max_inflight_bytes=4 * MIB,  # 3 MiB for large bodies, 1 MiB kept for small ones
        body_timeout_seconds=3.0,
    )
    app = create_app(replace(settings))
    runner = web.AppRunner(app, **SERVER_OPTIONS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Gateway(app, port)
    finally:
        await runner.cleanup()


async def _start(port: int, declared: int, sent: int) -> asyncio.StreamWriter:
    """A request declaring `declared` body bytes, of which `sent` are sent; left open."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\n".encode()
        + UNSIGNED
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + b"x" * sent
    )
    await writer.drain()
    return writer


async def _until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")


async def test_over_budget_is_503_at_once_and_a_small_delivery_still_fits(
    gateway: Gateway,
) -> None:
    holders = [await _start(gateway.port, HELD, 1000) for _ in range(3)]
    await _until(lambda: gateway.budget.large_in_use > 3 * MIB - 8192)
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gateway.port}{WEBHOOK_PATH}"
        headers = {"svix-id": "msg_1", "svix-timestamp": "1", "svix-signature": "v1,AAAA"}
        async with http.post(url, data=b"y" * (100 * 1024), headers=headers) as answer:
            assert answer.status == 503
            assert answer.headers["Retry-After"] == "5"
            assert answer.headers["Connection"] == "close"
            assert await answer.json() == {"error": "too many deliveries in progress, retry"}
        # A small body is read (and refused for its signature), not turned away.
        async with http.post(url, data=b'{"type":"x"}', headers=headers) as answer:
            assert answer.status == 400
    assert gateway.counted("over_budget") == 1
    for w in holders:  # the client disconnect path gives the reservation back
        w.close()
    await _until(lambda: gateway.budget.in_use == 0, within=1)
    assert gateway.counted("slow_body") == 0


async def test_chunked_bodies_are_reserved_as_they_come(gateway: Gateway) -> None:
    holders = [await _start(gateway.port, HELD, 10) for _ in range(3)]
    await _until(lambda: gateway.budget.large_in_use > 3 * MIB - 8192)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\n".encode()
        + UNSIGNED
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"z" * (64 * 1024)
    try:
        for _ in range(40):  # up to 2.5 MiB: over the small share long before that
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    except ConnectionError:
        pass
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 503"), status
    writer.close()
    for w in holders:
        w.close()
    await _until(lambda: gateway.budget.in_use == 0)


async def test_a_slow_body_times_out_and_gives_its_reservation_back(gateway: Gateway) -> None:
    writer = await _start(gateway.port, 5000, 10)
    await _until(lambda: gateway.budget.in_use > 0)
    await _until(lambda: gateway.budget.in_use == 0, within=5)
    assert gateway.counted("slow_body") == 1
    writer.close()


async def test_two_thousand_unsigned_deliveries_are_counted_but_not_logged_one_by_one(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{gateway.port}{WEBHOOK_PATH}"
    with caplog.at_level(logging.WARNING, "entitlements.gateway"):
        async with aiohttp.ClientSession() as http:
            for _ in range(2000):
                async with http.post(url, data=b"{}") as answer:
                    assert answer.status == 400
    assert gateway.counted("missing_header") == 2000
    lines = [r for r in caplog.records if r.name == "entitlements.gateway"]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]


async def test_malformed_http_is_counted_not_logged_with_a_traceback_each(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            assert b" 400 " in await reader.readline()
            writer.close()
    assert gateway.counted("bad_http") == 50
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) <= 2 and not any(r.exc_info for r in errors), errors
