"""Fuzzing the gateway's HTTP surface: arbitrary bodies and Svix header values never get a
5xx (nothing forged verifies, so every answer is a 4xx) and never crash the process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import SYNC_SECRET
from tests.support.service_process import free_port
from tests.support.stack import get, new_signing_secret, post
from webhook_gateway.app import WEBHOOK_PATH, create_app
from webhook_gateway.config import GatewaySettings

pytestmark = pytest.mark.e2e

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
)


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    """The real app on a real socket, in a thread; the service behind it is unreachable."""
    port = free_port()
    settings = GatewaySettings(
        host="127.0.0.1",
        port=port,
        target=f"127.0.0.1:{free_port()}",
        signing_secrets=(new_signing_secret(),),
        sync_secret=SYNC_SECRET,
    )
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(settings))

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for _ in range(100):
        try:
            if get(port, "/healthz").status == 200:
                break
        except OSError:
            threading.Event().wait(0.05)
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@given(
    body=st.binary(max_size=3000),
    svix_id=st.none() | header_text,
    svix_timestamp=st.none() | header_text | st.integers(-(10**12), 10**12).map(str),
    svix_signature=st.none() | header_text | st.lists(header_text, max_size=3).map(" ".join),
    extra=st.lists(
        st.tuples(st.sampled_from(["svix-id", "svix-signature", "x-a"]), header_text), max_size=2
    ),
)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_no_input_gets_a_5xx(
    gateway_port: int,
    body: bytes,
    svix_id: str | None,
    svix_timestamp: str | None,
    svix_signature: str | None,
    extra: list[tuple[str, str]],
) -> None:
    headers = [
        (name, value)
        for name, value in (
            ("svix-id", svix_id),
            ("svix-timestamp", svix_timestamp),
            ("svix-signature", svix_signature),
        )
        if value is not None
    ] + extra
    answer = post(gateway_port, body, headers, path=WEBHOOK_PATH)
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])
    assert get(gateway_port, "/healthz").status == 200
