"""EntitlementService over HTTP (ENTITLEMENTS_HTTP_LISTEN, service/connect_api.py): Connect
unary with JSON and binary protobuf, the server-streaming Watch, gRPC-Web, error codes and the
read token, against the same server (and servicer) as gRPC."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from connectrpc.code import Code
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import billing_sync_service_pb2 as sync_pb
from entitlements.v1 import entitlement_service_pb2 as pb
from service.domain.errors import InvalidArgument, OutOfRange, Unavailable
from service.entrypoints.connect_api import CONNECT_CODES, connect_error
from tests.conftest import Harness, _truncate, start_harness
from tests.support import Clock
from tests.support.rpc import subject

pytestmark = pytest.mark.integration

SERVICE = "/entitlements.v1.EntitlementService/"
READ_TOKEN = "connect-read-token-0123456789"


@pytest.fixture
async def http(database_url: str, clock: Clock) -> AsyncIterator[tuple[Harness, str]]:
    await _truncate(database_url)
    async for h in start_harness(database_url, clock, http_listen="127.0.0.1:0"):
        assert h.running.http is not None
        yield h, f"http://127.0.0.1:{h.running.http.port}"


async def _post(
    url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"content-type": content_type, **(headers or {})}
        ) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def _json_call(
    base: str, method: str, request: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    status, _, body = await _post(
        base + SERVICE + method, json.dumps(request).encode(), "application/json", headers
    )
    return status, json.loads(body)


async def _grant_pro(h: Harness, who: str) -> None:
    expires = Timestamp()
    expires.FromMilliseconds(h.clock.now_ms() + 86_400_000)
    await h.sync.GrantPlan(
        sync_pb.GrantPlanRequest(subject=who, plan="pro", reason="test", expires_at=expires),
        metadata=h.auth,
    )


def _parsed(data: Any, message: Message) -> Message:
    return json_format.Parse(json.dumps(data), message)


async def test_json_unary_answers_what_grpc_answers(http: tuple[Harness, str]) -> None:
    h, base = http
    who = subject("connect")
    await _grant_pro(h, who)
    status, data = await _json_call(base, "CanUse", {"subject": who, "feature": "dataExport"})
    assert status == 200, data
    assert data["allowed"] is True and data["plan"] == "pro"
    assert data["reason"] == "REASON_GRANTED_BY_OVERRIDE"
    grpc_answer = await h.entitlements.CanUse(pb.CanUseRequest(subject=who, feature="dataExport"))
    assert _parsed(data, pb.CanUseResponse()) == grpc_answer

    status, data = await _json_call(
        base, "CheckLimit", {"subject": "user_free_c", "limit": "maxHabits", "currentUsage": 9}
    )
    assert status == 200 and data["allowed"] is True
    assert data["limit"] == "10" and data["remaining"] == "1"  # int64 as JSON strings
    status, data = await _json_call(base, "GetEntitlements", {"subject": who})
    assert _parsed(data, pb.GetEntitlementsResponse()) == await h.entitlements.GetEntitlements(
        pb.GetEntitlementsRequest(subject=who)
    )


async def test_binary_protobuf_unary(http: tuple[Harness, str]) -> None:
    h, base = http
    request = pb.BatchCanUseRequest(
        checks=[
            pb.CanUseRequest(subject="user_b1", feature="aiInsights"),
            pb.CanUseRequest(subject="user_b1", feature="dataExport"),
        ]
    )
    status, headers, body = await _post(
        base + SERVICE + "BatchCanUse", request.SerializeToString(), "application/proto"
    )
    assert status == 200 and headers["Content-Type"] == "application/proto"
    answer = pb.BatchCanUseResponse.FromString(body)
    assert [r.allowed for r in answer.results] == [True, False]
    assert answer == await h.entitlements.BatchCanUse(request)


async def test_an_unknown_feature_is_invalid_argument(http: tuple[Harness, str]) -> None:
    _, base = http
    status, data = await _json_call(base, "CanUse", {"subject": "user_1", "feature": "teleport"})
    assert status == 400
    assert data == {"code": "invalid_argument", "message": "unknown feature 'teleport'"}
    status, data = await _json_call(base, "GetLimits", {"subject": ""})
    assert status == 400 and data["code"] == "invalid_argument"


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


async def _envelopes(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[int, bytes]]:
    while True:
        head = await response.content.readexactly(5)
        flags, size = struct.unpack(">BI", head)
        yield flags, await response.content.readexactly(size)


async def test_watch_streams_over_connect(http: tuple[Harness, str]) -> None:
    h, base = http
    who = subject("watch")
    request = json.dumps({"subjects": [who]}).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + SERVICE + "WatchEntitlements",
            data=_envelope(request),
            headers={"content-type": "application/connect+json"},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/connect+json"
        messages = _envelopes(r)
        flags, first = await anext(messages)
        assert flags == 0 and "subject" not in json.loads(first)  # a heartbeat: caught up
        await _grant_pro(h, who)
        async with asyncio.timeout(10):
            async for flags, data in messages:
                assert flags == 0, data  # not the end of the stream
                message = json.loads(data)
                if message.get("subject") == who:
                    break
        assert message["entitlements"]["plan"] == "pro"
        assert message["entitlements"]["status"] == "ENTITLEMENT_STATUS_GRANTED"


async def test_watch_errors_end_the_stream_with_the_code(http: tuple[Harness, str]) -> None:
    _, base = http
    request = json.dumps({"sinceVersion": "999999999"}).encode()
    status, _, body = await _post(
        base + SERVICE + "WatchEntitlements", _envelope(request), "application/connect+json"
    )
    assert status == 200
    flags, size = struct.unpack(">BI", body[:5])
    assert flags == 2  # end of stream, carrying the error
    end = json.loads(body[5 : 5 + size])
    assert end["error"]["code"] == "out_of_range"


async def test_grpc_web(http: tuple[Harness, str]) -> None:
    h, base = http
    who = subject("grpcweb")
    await _grant_pro(h, who)
    request = pb.GetLimitsRequest(subject=who).SerializeToString()
    status, headers, body = await _post(
        base + SERVICE + "GetLimits", _envelope(request), "application/grpc-web+proto"
    )
    assert status == 200 and headers["Content-Type"].startswith("application/grpc-web")
    flags, size = struct.unpack(">BI", body[:5])
    assert flags == 0
    answer = pb.GetLimitsResponse.FromString(body[5 : 5 + size])
    assert answer.plan == "pro" and answer.limits["maxHabits"].unlimited
    trailer = body[5 + size :]
    assert trailer[0] == 0x80 and b"grpc-status:0" in trailer.replace(b" ", b"")

    bad = pb.CanUseRequest(subject=who, feature="teleport").SerializeToString()
    _, headers, body = await _post(
        base + SERVICE + "CanUse", _envelope(bad), "application/grpc-web+proto"
    )
    status_line = headers.get("grpc-status") or body.decode(errors="replace")
    assert "3" in status_line  # INVALID_ARGUMENT


async def test_the_read_token_is_required_when_configured(database_url: str, clock: Clock) -> None:
    await _truncate(database_url)
    async for h in start_harness(
        database_url, clock, http_listen="127.0.0.1:0", read_tokens=(READ_TOKEN,)
    ):
        assert h.running.http is not None
        base = f"http://127.0.0.1:{h.running.http.port}"
        request = {"subject": "user_tok", "feature": "aiInsights"}
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}):
            status, data = await _json_call(base, "CanUse", request, headers)
            assert status == 401
            assert data == {"code": "unauthenticated", "message": "missing or invalid credentials"}
        _, _, body = await _post(
            base + SERVICE + "WatchEntitlements", _envelope(b"{}"), "application/connect+json"
        )
        assert json.loads(body[5:])["error"]["code"] == "unauthenticated"
        status, data = await _json_call(
            base, "CanUse", request, {"authorization": f"Bearer {READ_TOKEN}"}
        )
        assert status == 200 and data["allowed"] is True


def test_one_code_table_for_both_protocols() -> None:
    """Every gRPC status code has its Connect twin; the service's errors keep code and text."""
    assert {c for s, c in CONNECT_CODES.items() if s is not grpc.StatusCode.OK} == set(Code)
    for exc, code in (
        (InvalidArgument("unknown feature 'x'"), "invalid_argument"),
        (OutOfRange("since_version 9"), "out_of_range"),
        (Unavailable("database unreachable"), "unavailable"),
    ):
        error = connect_error(exc, "CanUse")
        assert error.code.value == code and error.message == str(exc)
    hidden = connect_error(RuntimeError("secret detail"), "CanUse")
    assert hidden.code.value == "internal" and hidden.message == "internal error"
