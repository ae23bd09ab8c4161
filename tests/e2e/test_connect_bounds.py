"""The Connect listener (ENTITLEMENTS_HTTP_LISTEN) against what a hostile caller sends, on a
real service process: floods of slow 4 MB bodies, a trickled body, headers never finished,
and malformed bodies, each answered with fixed text, counted, and in bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest

from service.entrypoints.message_limits import (
    BODY_TIMEOUT_MESSAGE,
    NEEDS_HTTP2_MESSAGE,
    UNDECODABLE_MESSAGE,
)
from tests.support import SYNC_SECRET
from tests.support.memory import PeakRss
from tests.support.metrics import rpc, scrape_until, value
from tests.support.raw_http import post, read_response, request_head, slow_body
from tests.support.service_process import free_port, service_process

pytestmark = pytest.mark.e2e

SERVICE = "/entitlements.v1.EntitlementService/"
USAGE_SERVICE = "entitlements.v1.UsageService"
USAGE = f"/{USAGE_SERVICE}/"
TOKEN = "connect-bounds-token-0123456789"
HANDLED = "grpc_server_handled_total"
MIB = 1024 * 1024
# What 100 hostile connections may add to the service's RSS: hypercorn's buffers of each
# (socket reader, 4 queued chunks) and, token unset, the 16 MiB body budget in flight.
BOUND_MIB = 64


@dataclass
class Listener:
    pid: int
    http: int
    metrics: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics}/metrics"


@contextmanager
def _service(database_url: str, tmp_path: Path, **env: str) -> Iterator[Listener]:
    """The service with its Connect and metrics listeners, and `env`'s settings."""
    http, metrics = free_port(), free_port()
    settings = {
        "DATABASE_URL": database_url,
        "BILLING_WEBHOOK_SYNC_SECRET": SYNC_SECRET,
        "ENTITLEMENTS_HTTP_LISTEN": f"127.0.0.1:{http}",
        "ENTITLEMENTS_METRICS_LISTEN": f"127.0.0.1:{metrics}",
        **env,
    }
    with service_process(settings, tmp_path / "service.log") as (proc, _):
        yield Listener(proc.pid, http, metrics)


async def _legit_call(port: int, token: str | None) -> dict[str, object]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}{SERVICE}CanUse",
            data=json.dumps({"subject": "user_legit", "feature": "aiInsights"}),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as r,
    ):
        assert r.status == 200, await r.text()
        answer: dict[str, object] = await r.json()
        return answer


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token-set", "token-unset"])
def test_a_flood_of_slow_4mb_bodies_holds_memory_bounded(
    database_url: str, tmp_path: Path, token: str | None
) -> None:
    """100 connections trickling 4 MB bodies (half with a declared Content-Length, half
    chunked, to the list methods' 1 MiB cap and the reads' 64 KiB one), unauthenticated.
    Before the guard the service held them all: RSS 69 -> 455 MiB."""
    env = {"ENTITLEMENTS_READ_TOKEN": token} if token else {}
    with _service(database_url, tmp_path, **env) as svc:
        rss = PeakRss(svc.pid)
        headers = {"content-type": "application/json", "authorization": "Bearer wrong-token"}

        async def attack() -> tuple[list[object], dict[str, object]]:
            floods = [
                asyncio.create_task(
                    slow_body(
                        svc.http,
                        SERVICE + ("BatchCanUse" if i % 2 else "CanUse"),
                        headers,
                        total=4 * MIB,
                        chunk=256 * 1024,
                        interval=0.15,
                        declare=i % 4 < 2,
                    )
                )
                for i in range(100)
            ]
            legit: dict[str, object] = {}
            for _ in range(20):  # during the attack: sample memory, one real call midway
                await asyncio.sleep(0.15)
                rss.sample()
                if not legit and _ == 5:
                    legit = await _legit_call(svc.http, token)
            results = await asyncio.gather(*floods)
            rss.sample()
            return list(results), legit

        results, legit = asyncio.run(attack())
        assert legit["allowed"] is True
        growth = rss.peak - rss.baseline
        time.sleep(0.5)
        after = rss.sample()
        print(f"RSS baseline {rss.baseline:.0f} MiB, peak {rss.peak:.0f}, after {after:.0f}")
        assert growth < BOUND_MIB, f"RSS grew {growth:.0f} MiB under the flood"
        # Every flooding connection was cut short: none delivered its 4 MB.
        assert all(r.cut for r in results), [r for r in results if not r.cut][:3]  # type: ignore[attr-defined]
        # The allocator keeps freed arenas: memory after stays within the bound, no higher.
        assert after < rss.baseline + BOUND_MIB


def test_usage_service_floods_are_refused_by_token_and_cap_in_bounded_memory(
    database_url: str, tmp_path: Path
) -> None:
    """UsageService over Connect, token set: 100 connections trickling 4 MB bodies to Consume
    and GetUsage, half with the right token (cut at the reads' 64 KiB cap, declared or
    chunked), half with a wrong one (cut before any body byte). A real Consume is answered
    during it, memory stays bounded, and every refusal is counted under its code. Before
    UsageService was on the listener, the legitimate Consume was a 404."""
    with _service(database_url, tmp_path, ENTITLEMENTS_READ_TOKEN=TOKEN) as svc:
        rss = PeakRss(svc.pid)
        right = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
        wrong = {**right, "authorization": "Bearer wrong-token"}
        # i % 4: 0 Consume, right token, declared; 1 the same, chunked; 2 GetUsage, wrong
        # token, declared; 3 Consume, wrong token, chunked.
        flood = [
            (USAGE + ("GetUsage" if i % 4 == 2 else "Consume"), right if i % 4 < 2 else wrong)
            for i in range(100)
        ]

        async def attack() -> tuple[list[object], dict[str, object]]:
            floods = [
                asyncio.create_task(
                    slow_body(svc.http, path, headers, total=4 * MIB, chunk=256 * 1024,
                              interval=0.15, declare=i % 2 == 0)
                )
                for i, (path, headers) in enumerate(flood)
            ]  # fmt: skip
            legit: dict[str, object] = {}
            for tick in range(20):
                await asyncio.sleep(0.15)
                rss.sample()
                if tick == 5:
                    legit = await _legit_consume(svc.http)
            results = await asyncio.gather(*floods)
            rss.sample()
            return list(results), legit

        results, legit = asyncio.run(attack())
        assert (legit["allowed"], legit["used"]) == (True, "1"), legit
        growth = rss.peak - rss.baseline
        time.sleep(0.5)
        after = rss.sample()
        print(f"RSS baseline {rss.baseline:.0f} MiB, peak {rss.peak:.0f}, after {after:.0f}")
        assert growth < BOUND_MIB, f"RSS grew {growth:.0f} MiB under the flood"
        assert all(r.cut for r in results), [r for r in results if not r.cut][:3]  # type: ignore[attr-defined]
        assert after < rss.baseline + BOUND_MIB
        consume = {"grpc_type": "unary", **rpc("Consume", USAGE_SERVICE)}
        get_usage = {"grpc_type": "unary", **rpc("GetUsage", USAGE_SERVICE)}
        samples = scrape_until(
            svc.metrics_url,
            lambda s: (
                value(s, HANDLED, **get_usage, grpc_code="UNAUTHENTICATED") == 25
                and value(s, HANDLED, **consume, grpc_code="RESOURCE_EXHAUSTED") == 50
            ),
        )
        assert value(samples, HANDLED, **consume, grpc_code="RESOURCE_EXHAUSTED") == 50
        assert value(samples, HANDLED, **consume, grpc_code="UNAUTHENTICATED") == 25
        assert value(samples, HANDLED, **get_usage, grpc_code="UNAUTHENTICATED") == 25
        assert value(samples, HANDLED, **consume, grpc_code="OK") == 1


async def _legit_consume(port: int) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}{USAGE}Consume",
            data=json.dumps({"subject": "user_legit_usage", "limit": "aiInsightsPerMonth",
                             "amount": 1, "idempotencyKey": "legit-1"}),
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as r,
    ):  # fmt: skip
        assert r.status == 200, await r.text()
        answer: dict[str, object] = await r.json()
        return answer


def test_a_trickled_body_is_cut_at_the_body_deadline(database_url: str, tmp_path: Path) -> None:
    """One byte every 0.2 s of a 100-byte body, with a 1 s body deadline: answered
    DEADLINE_EXCEEDED with fixed text within a few seconds (before: never timed out)."""
    with _service(database_url, tmp_path, ENTITLEMENTS_HTTP_BODY_TIMEOUT_SECONDS="1") as svc:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", svc.http), timeout=5) as sock:
            head = request_head(
                svc.http,
                SERVICE + "CanUse",
                {"content-type": "application/json"},
                content_length=100,
            )
            sock.sendall(head)
            answered = threading.Event()

            def trickle() -> None:
                with contextlib.suppress(OSError):
                    while not answered.wait(0.2):
                        sock.sendall(b" ")

            threading.Thread(target=trickle, daemon=True).start()
            try:
                status, _, body = read_response(sock, timeout=6)
            finally:
                answered.set()
            elapsed = time.monotonic() - began
        assert elapsed < 3, f"the trickled body was not cut ({elapsed:.1f} s)"
        assert status == 504
        assert json.loads(body) == {"code": "deadline_exceeded", "message": BODY_TIMEOUT_MESSAGE}
        scrape_until(
            svc.metrics_url,
            lambda s: value(s, HANDLED, **_can_use(), grpc_code="DEADLINE_EXCEEDED") == 1,
        )


def test_incomplete_headers_are_cut_at_the_header_deadline(
    database_url: str, tmp_path: Path
) -> None:
    """Headers never finished, with a 1 s header deadline: the connection is closed within a
    few seconds (before: ~75 s)."""
    with _service(database_url, tmp_path, ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS="1") as svc:
        assert _closed_within(svc.http, b"POST " + SERVICE.encode() + b"CanUse HTTP/1.1\r\n") < 3


def _closed_within(port: int, partial: bytes, limit: float = 10.0) -> float:
    """Seconds until the server closes a connection that sent only `partial`."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(partial + b"host: x\r\n")
        try:
            while sock.recv(1024):  # an error response, if any, then the close
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    return time.monotonic() - began


def _can_use() -> dict[str, str]:
    return {"grpc_type": "unary", **rpc("CanUse")}


def _grpc_web_status(headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """grpc-status and grpc-message, from the headers (trailers-only) or the trailer frame."""
    if "grpc-status" in headers:
        return headers["grpc-status"], unquote(headers.get("grpc-message", ""))
    while body and body[0] != 0x80:
        body = body[5 + int.from_bytes(body[1:5], "big") :]
    fields = dict(line.split(":", 1) for line in body[5:].decode().split("\r\n") if ":" in line)
    return fields["grpc-status"].strip(), unquote(fields.get("grpc-message", "").strip())


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def test_malformed_bodies_get_fixed_text_and_are_counted(database_url: str, tmp_path: Path) -> None:
    """Every malformed request of item 8 is answered with a fixed message (no parser or
    exception text) and counted in grpc_server_handled_total under its code; with the token
    set, an unauthenticated malformed body is UNAUTHENTICATED."""
    with _service(database_url, tmp_path, ENTITLEMENTS_READ_TOKEN=TOKEN) as svc:
        auth = {"authorization": f"Bearer {TOKEN}"}
        json_type = {"content-type": "application/json", **auth}
        can_use = SERVICE + "CanUse"
        connect_cases = [
            ("malformed JSON", json_type, b'{"subject": '),
            ("wrong types", json_type, b'{"subject": 5, "feature": ["x"]}'),
            ("bad compression", {**json_type, "content-encoding": "gzip"}, b"not gzip at all"),
            ("bad protobuf", {**auth, "content-type": "application/proto"}, b"\xff\xff\xff"),
            ("bad protocol version", {**json_type, "connect-protocol-version": "7x"}, b"{}"),
            ("bad timeout header", {**json_type, "connect-timeout-ms": "soon"}, b"{}"),
        ]
        for name, headers, body in connect_cases:
            status, _, answer = post(svc.http, can_use, body, headers)
            assert (status, json.loads(answer)) == (
                400,
                {"code": "invalid_argument", "message": UNDECODABLE_MESSAGE},
            ), name
        _, headers, answer = post(
            svc.http,
            can_use,
            _envelope(b"\xff\xff"),
            {**auth, "content-type": "application/grpc-web+proto"},
        )
        assert _grpc_web_status(headers, answer) == ("3", UNDECODABLE_MESSAGE)
        status, headers, _ = post(
            svc.http, can_use, _envelope(b""), {**auth, "content-type": "application/grpc"}
        )
        assert headers["grpc-status"] == "12"  # UNIMPLEMENTED: gRPC needs HTTP/2's trailers
        assert unquote(headers["grpc-message"]) == NEEDS_HTTP2_MESSAGE
        status, _, answer = post(
            svc.http,
            SERVICE + "WatchEntitlements",
            _envelope(b'{"subjects": '),
            {**auth, "content-type": "application/connect+json"},
        )
        end = json.loads(answer[5:])
        assert end == {"error": {"code": "invalid_argument", "message": UNDECODABLE_MESSAGE}}
        status, _, answer = post(
            svc.http, can_use, b'{"subject": ', {"content-type": "application/json"}
        )
        assert (status, json.loads(answer)["code"]) == (401, "unauthenticated")

        samples = scrape_until(
            svc.metrics_url,
            lambda s: value(s, HANDLED, **_can_use(), grpc_code="UNAUTHENTICATED") == 1,
        )
        assert value(samples, HANDLED, **_can_use(), grpc_code="INVALID_ARGUMENT") == 7
        assert value(samples, HANDLED, **_can_use(), grpc_code="UNIMPLEMENTED") == 1
        watch = {"grpc_type": "server_stream", **rpc("WatchEntitlements")}
        assert value(samples, HANDLED, **watch, grpc_code="INVALID_ARGUMENT") == 1
