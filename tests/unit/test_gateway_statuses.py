"""The gateway's status table (SPEC §5), with aiohttp's test client and a fake forwarder:
what each forwarding outcome and each refused request is answered, and that nothing the
service said (its details) reaches the sender. End-to-end runs of the same table are in
tests/e2e; this is where a row of it is changed first."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.support.stack import signed_headers
from webhook_gateway.app import WEBHOOK_PATH, create_app
from webhook_gateway.config import GatewaySettings
from webhook_gateway.forwarding import ForwardFailed, ForwardResult

pytestmark = pytest.mark.unit

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SETTINGS = GatewaySettings.from_env(
    {"CLERK_WEBHOOK_SIGNING_SECRET": SECRET, "BILLING_WEBHOOK_SYNC_SECRET": "s" * 32}
)


class FakeForwarder:
    """Answers what the test sets: a result, or a failure with a gRPC status."""

    def __init__(self) -> None:
        self.failure: ForwardFailed | None = None
        self.forwarded: list[str] = []
        self.ready = True
        self.closed = False

    async def forward(
        self, event_id: str, event_type: str, body: bytes, signed_at_seconds: int
    ) -> ForwardResult:
        self.forwarded.append(event_id)
        if self.failure is not None:
            raise self.failure
        return ForwardResult("APPLIED", "user_1", "pro", "free_user")

    async def service_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def forwarder() -> FakeForwarder:
    return FakeForwarder()


@pytest.fixture
async def client(forwarder: FakeForwarder) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_app(SETTINGS, forwarder=forwarder))) as c:
        yield c
    assert forwarder.closed  # the app closes the forwarder it was given at cleanup


def signed(body: bytes) -> dict[str, str]:
    return signed_headers(body, SECRET, "msg_1")


BODY = json.dumps({"type": "subscription.active", "data": {}}).encode()


async def test_an_applied_delivery_is_200(client: TestClient, forwarder: FakeForwarder) -> None:  # type: ignore[type-arg]
    response = await client.post(WEBHOOK_PATH, data=BODY, headers=signed(BODY))
    assert response.status == 200
    assert await response.json() == {"outcome": "APPLIED"}
    assert forwarder.forwarded == ["msg_1"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 500),
        (grpc.StatusCode.FAILED_PRECONDITION, 500),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.INTERNAL, 503),
    ],
)
async def test_a_failed_forward_is_answered_by_its_code(
    client: TestClient,  # type: ignore[type-arg]
    forwarder: FakeForwarder,
    code: grpc.StatusCode,
    status: int,
) -> None:
    forwarder.failure = ForwardFailed(code, "secret detail from the service")
    response = await client.post(WEBHOOK_PATH, data=BODY, headers=signed(BODY))
    assert response.status == status
    assert "secret detail" not in await response.text()


async def test_refused_requests_are_never_forwarded(
    client: TestClient,  # type: ignore[type-arg]
    forwarder: FakeForwarder,
) -> None:
    unsigned = await client.post(WEBHOOK_PATH, data=BODY)
    assert unsigned.status == 400
    forged = {**signed(BODY), "svix-signature": "v1,AAAA"}
    assert (await client.post(WEBHOOK_PATH, data=BODY, headers=forged)).status == 400
    big = b"x" * (SETTINGS.max_body_bytes + 1)
    assert (await client.post(WEBHOOK_PATH, data=big, headers=signed(big))).status == 413
    assert forwarder.forwarded == []


async def test_unconfigured_is_500_and_not_ready(forwarder: FakeForwarder) -> None:
    bare = GatewaySettings.from_env({})
    async with TestClient(TestServer(create_app(bare, forwarder=forwarder))) as c:
        assert (await c.post(WEBHOOK_PATH, data=BODY, headers=signed(BODY))).status == 500
        assert (await c.get("/readyz")).status == 503
    assert forwarder.forwarded == []


async def test_ready_follows_the_service(client: TestClient, forwarder: FakeForwarder) -> None:  # type: ignore[type-arg]
    assert (await client.get("/readyz")).status == 200
    forwarder.ready = False
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_tracing_leaves_the_environment_as_it_was(forwarder: FakeForwarder) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    before = dict(os.environ)
    app = create_app(SETTINGS, TracerProvider(), forwarder=forwarder)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/healthz")).status == 200
    assert dict(os.environ) == before
