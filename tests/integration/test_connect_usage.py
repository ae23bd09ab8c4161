"""UsageService over HTTP (ENTITLEMENTS_HTTP_LISTEN, connect_api.py): Connect JSON and binary,
gRPC-Web, the read token checked first, the reads' message cap, fixed error text and the
grpc_server_* count, all answered by the same UsageServicer (and database) as the gRPC port."""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format

from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from service.entrypoints.message_limits import (
    READ_MAX_BYTES,
    TOO_LARGE_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    UNDECODABLE_MESSAGE,
)
from service.entrypoints.rpc_metrics import series_for
from tests.conftest import Harness, _truncate, start_harness
from tests.support import Clock
from tests.support.rpc import subject

pytestmark = pytest.mark.integration

USAGE = "/entitlements.v1.UsageService/"
METER = "aiInsightsPerMonth"
READ_TOKEN = "connect-usage-token-0123456789"
AUTH = {"authorization": f"Bearer {READ_TOKEN}"}


@pytest.fixture
async def http(database_url: str, clock: Clock) -> AsyncIterator[tuple[Harness, str]]:
    await _truncate(database_url)
    async for h in start_harness(
        database_url, clock, http_listen="127.0.0.1:0", read_tokens=(READ_TOKEN,)
    ):
        assert h.running.http is not None
        yield h, f"http://127.0.0.1:{h.running.http.port}"


def _key() -> str:
    return "k_" + secrets.token_hex(8)


def _metadata() -> tuple[tuple[str, str]]:
    return (("authorization", AUTH["authorization"]),)


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


async def _call(
    base: str, method: str, request: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    status, _, body = await _post(
        base + USAGE + method, json.dumps(request).encode(), "application/json", headers
    )
    return status, json.loads(body)


def _handled(method: str) -> dict[str, int]:
    return dict(series_for(USAGE + method, False).handled)


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {c: n - before.get(c, 0) for c, n in after.items() if n != before.get(c, 0)}


async def test_consume_to_the_limit_and_get_usage_answer_as_over_grpc(
    http: tuple[Harness, str],
) -> None:
    h, base = http
    stub = usage_grpc.UsageServiceStub(h.channel)
    who = subject("cusage")
    before = _handled("Consume")
    request = {"subject": who, "limit": METER, "amount": "15", "idempotencyKey": "first"}
    status, first = await _call(base, "Consume", request, AUTH)
    assert status == 200, first
    assert (first["allowed"], first["used"], first["remaining"]) == (True, "15", "5")
    # The same key over gRPC: the first answer, marked a duplicate, nothing recorded.
    again = await stub.Consume(
        usage_pb.ConsumeRequest(subject=who, limit=METER, amount=15, idempotency_key="first"),
        metadata=_metadata(),
    )
    expected = json_format.Parse(json.dumps(first), usage_pb.ConsumeResponse())
    expected.duplicate = True
    assert again == expected
    status, refused = await _call(
        base, "Consume", {**request, "amount": "6", "idempotencyKey": _key()}, AUTH
    )
    assert (status, refused.get("allowed", False)) == (200, False)
    assert (refused["used"], refused["remaining"]) == ("15", "5")
    status, last = await _call(
        base, "Consume", {**request, "amount": "5", "idempotencyKey": _key()}, AUTH
    )
    assert (last["allowed"], last["used"], last.get("remaining", "0")) == (True, "20", "0")

    status, got = await _call(base, "GetUsage", {"subject": who}, AUTH)
    assert status == 200
    over_grpc = await stub.GetUsage(usage_pb.GetUsageRequest(subject=who), metadata=_metadata())
    assert json_format.Parse(json.dumps(got), usage_pb.GetUsageResponse()) == over_grpc
    assert [(u.limit, u.used, u.limit_value) for u in over_grpc.usage] == [(METER, 20, 20)]
    # One series for both protocols: three calls over Connect, one over gRPC.
    assert _grown(before, _handled("Consume")) == {"OK": 4}


async def test_report_reserve_commit_release_over_connect(http: tuple[Harness, str]) -> None:
    _, base = http
    who = subject("creserve")
    status, held = await _call(
        base,
        "Reserve",
        {"subject": who, "limit": METER, "amount": "12", "idempotencyKey": _key()},
        AUTH,
    )
    assert status == 200 and held["allowed"] and held["remaining"] == "8", held
    status, committed = await _call(
        base, "CommitReservation", {"reservationId": held["reservationId"], "amount": "7"}, AUTH
    )
    assert (status, committed["used"], committed["remaining"]) == (200, "7", "13")
    status, second = await _call(
        base,
        "Reserve",
        {"subject": who, "limit": METER, "amount": "3", "idempotencyKey": _key()},
        AUTH,
    )
    status, released = await _call(
        base, "ReleaseReservation", {"reservationId": second["reservationId"]}, AUTH
    )
    assert (status, released["used"], released["remaining"]) == (200, "7", "13")
    status, reported = await _call(
        base,
        "ReportUsage",
        {"subject": who, "limit": METER, "delta": "25", "idempotencyKey": _key()},
        AUTH,
    )
    assert (status, reported["used"], reported.get("remaining", "0")) == (200, "32", "0")


async def test_bad_usage_input_is_invalid_argument_with_the_grpc_message(
    http: tuple[Harness, str],
) -> None:
    h, base = http
    stub = usage_grpc.UsageServiceStub(h.channel)
    before = _handled("Consume")
    bad = {"subject": "user_bad", "limit": "maxHabits", "amount": "1", "idempotencyKey": _key()}
    status, data = await _call(base, "Consume", bad, AUTH)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Consume(
            json_format.ParseDict(bad, usage_pb.ConsumeRequest()), metadata=_metadata()
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (status, data) == (400, {"code": "invalid_argument", "message": err.value.details()})
    status, data = await _call(base, "Consume", {**bad, "limit": METER, "idempotencyKey": ""}, AUTH)
    assert (status, data["code"]) == (400, "invalid_argument")
    status, _, body = await _post(
        base + USAGE + "Consume", b'{"subject": ', "application/json", AUTH
    )
    assert (status, json.loads(body)) == (
        400,
        {"code": "invalid_argument", "message": UNDECODABLE_MESSAGE},
    )
    assert _grown(before, _handled("Consume")) == {"INVALID_ARGUMENT": 4}  # 3 Connect, 1 gRPC


async def test_the_token_is_checked_before_the_body_and_the_read_cap_holds(
    http: tuple[Harness, str],
) -> None:
    """Without the token even a body far over the cap is UNAUTHENTICATED (nothing read);
    with it, a Consume over the reads' 64 KiB is RESOURCE_EXHAUSTED, declared or not."""
    _, base = http
    before = _handled("Consume")
    huge = b"x" * (4 * READ_MAX_BYTES)
    for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}):
        status, _, body = await _post(base + USAGE + "Consume", huge, "application/json", headers)
        assert (status, json.loads(body)) == (
            401,
            {"code": "unauthenticated", "message": UNAUTHENTICATED_MESSAGE},
        )
    status, _, body = await _post(base + USAGE + "Consume", huge, "application/json", AUTH)
    assert (status, json.loads(body)) == (
        429,
        {"code": "resource_exhausted", "message": TOO_LARGE_MESSAGE},
    )

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * READ_MAX_BYTES

    status, _, body = await _post(base + USAGE + "Consume", chunked(), "application/json", AUTH)  # type: ignore[arg-type]
    assert (status, json.loads(body)["message"]) == (429, TOO_LARGE_MESSAGE)
    assert _grown(before, _handled("Consume")) == {"UNAUTHENTICATED": 2, "RESOURCE_EXHAUSTED": 2}


async def test_grpc_web_and_binary_consume(http: tuple[Harness, str]) -> None:
    _, base = http
    who = subject("cweb")
    request = usage_pb.ConsumeRequest(subject=who, limit=METER, amount=2, idempotency_key=_key())
    status, headers, body = await _post(
        base + USAGE + "Consume", request.SerializeToString(), "application/proto", AUTH
    )
    assert status == 200 and headers["Content-Type"] == "application/proto"
    assert usage_pb.ConsumeResponse.FromString(body).used == 2
    envelope = struct.pack(">BI", 0, len(request.SerializeToString()))
    status, headers, body = await _post(
        base + USAGE + "Consume",
        envelope + request.SerializeToString(),
        "application/grpc-web+proto",
        AUTH,
    )
    flags, size = struct.unpack(">BI", body[:5])
    answer = usage_pb.ConsumeResponse.FromString(body[5 : 5 + size])
    assert status == 200 and flags == 0
    assert answer.duplicate and answer.used == 2  # the same key: counted once
    get = usage_pb.GetUsageRequest(subject=who).SerializeToString()
    _, headers, body = await _post(
        base + USAGE + "GetUsage",
        struct.pack(">BI", 0, len(get)) + get,
        "application/grpc-web+proto",
    )
    assert headers.get("grpc-status") == "16"  # UNAUTHENTICATED, trailers-only
