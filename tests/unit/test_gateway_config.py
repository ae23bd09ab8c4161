"""Gateway settings and signature verification, with plain values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from svix.webhooks import Webhook

from entitlements_cli import settings as cli_settings
from entitlements_cli.errors import ConfigError as CliConfigError
from entitlements_common.settings import ConfigError
from webhook_gateway.config import GatewaySettings
from webhook_gateway.verification import VerificationFailed, Verifier

pytestmark = pytest.mark.unit

S1 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
S2 = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
SYNC = "s" * 32


def test_defaults_and_missing_secrets_are_not_a_start_error() -> None:
    s = GatewaySettings.from_env({})
    assert (s.host, s.port, s.target) == ("127.0.0.1", 8080, "127.0.0.1:50051")
    assert not s.configured and s.signing_secrets == () and s.sync_secret is None


@pytest.mark.parametrize("sep", [" ", ",", ", ", "  ,\n"])
def test_several_signing_secrets_for_rotation(sep: str) -> None:
    s = GatewaySettings.from_env(
        {"CLERK_WEBHOOK_SIGNING_SECRET": S1 + sep + S2, "BILLING_WEBHOOK_SYNC_SECRET": SYNC}
    )
    assert s.signing_secrets == (S1, S2) and s.configured


def test_alias_variable() -> None:
    assert GatewaySettings.from_env({"CLERK_WEBHOOK_SECRET": S1}).signing_secrets == (S1,)
    both = {"CLERK_WEBHOOK_SIGNING_SECRET": S1, "CLERK_WEBHOOK_SECRET": S2}
    assert GatewaySettings.from_env(both).signing_secrets == (S1,)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CLERK_WEBHOOK_SIGNING_SECRET": "whsec_"}, "CLERK_WEBHOOK_SIGNING_SECRET"),
        ({"BILLING_WEBHOOK_SYNC_SECRET": "short"}, "BILLING_WEBHOOK_SYNC_SECRET"),
        ({"GATEWAY_LISTEN": "8080"}, "GATEWAY_LISTEN"),
        ({"GATEWAY_FORWARD_TIMEOUT_SECONDS": "20"}, "GATEWAY_FORWARD_TIMEOUT_SECONDS"),
        ({"GATEWAY_FORWARD_TIMEOUT_SECONDS": "soon"}, "GATEWAY_FORWARD_TIMEOUT_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        GatewaySettings.from_env(env)


def headers(
    body: str, secret: str, when: datetime | None = None, msg_id: str = "msg_1"
) -> dict[str, list[str]]:
    when = when or datetime.now(UTC)
    return {
        "svix-id": [msg_id],
        "svix-timestamp": [str(int(when.timestamp()))],
        "svix-signature": [Webhook(secret).sign(msg_id, when, body)],
    }


BODY = json.dumps({"type": "user.created", "data": {"id": "user_1"}})


def test_any_configured_secret_verifies() -> None:
    verifier = Verifier([S1, S2])
    for secret in (S1, S2):
        assert verifier.verify(BODY.encode(), headers(BODY, secret)).event_id == "msg_1"


def test_rotation_signature_list_with_one_match() -> None:
    h = headers(BODY, S2)
    other = headers(BODY, S1)["svix-signature"][0]
    h["svix-signature"] = [f"{other} {h['svix-signature'][0]}"]
    assert Verifier([S2]).verify(BODY.encode(), h).event_id == "msg_1"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.pop("svix-id"), "missing_header"),
        (lambda h: h.update({"svix-id": ["a", "b"]}), "duplicate_header"),
        (lambda h: h.update({"svix-timestamp": ["12.5"]}), "malformed_header"),
        (lambda h: h.update({"svix-signature": ["nocomma"]}), "malformed_signature"),
        (lambda h: h.update({"svix-signature": ["v1,@@@"]}), "bad_signature"),
    ],
)
def test_failures_have_reasons(mutate: object, reason: str) -> None:
    h = headers(BODY, S1)
    mutate(h)  # type: ignore[operator]
    with pytest.raises(VerificationFailed) as err:
        Verifier([S1]).verify(BODY.encode(), h)
    assert err.value.reason == reason


def test_timestamp_tolerance_is_five_minutes() -> None:
    verifier = Verifier([S1])
    ok_time = datetime.now(UTC) - timedelta(minutes=4)
    assert verifier.verify(BODY.encode(), headers(BODY, S1, ok_time))
    with pytest.raises(VerificationFailed) as err:
        verifier.verify(BODY.encode(), headers(BODY, S1, datetime.now(UTC) - timedelta(minutes=6)))
    assert err.value.reason == "timestamp"


def test_non_utf8_body() -> None:
    with pytest.raises(VerificationFailed) as err:
        Verifier([S1]).verify(b"\xff", headers("x", S1))
    assert err.value.reason == "malformed_body"


@pytest.mark.parametrize("bad", ["whsec_!!!", "whsec_", "whsec_a", "whsec_AAAAA", "whsec_%%%%"])
def test_a_signing_secret_that_holds_no_key_is_a_start_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"CLERK_WEBHOOK_SIGNING_SECRET: secret #2 is not"):
        GatewaySettings.from_env({"CLERK_WEBHOOK_SIGNING_SECRET": f"{S1} {bad}"})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ENTITLEMENTS_TLS_CLIENT_CERT": "/c.pem"}, "ENTITLEMENTS_TLS_CLIENT_CERT"),
        ({"ENTITLEMENTS_TLS_CA": "/a.pem", "ENTITLEMENTS_TLS_CLIENT_KEY": "/k.pem"}, "_KEY"),
    ],
)
def test_client_tls_is_the_client_librarys_and_refused_naming_the_variable(
    env: dict[str, str], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway and the CLI read the client library's `Tls`; each refuses a wrong setting
    with its own configuration error, naming the variable."""
    assert GatewaySettings.from_env({}).tls is None
    with pytest.raises(ConfigError, match=variable):
        GatewaySettings.from_env(env)
    for name in (
        "ENTITLEMENTS_TLS_CA",
        "ENTITLEMENTS_TLS_CLIENT_CERT",
        "ENTITLEMENTS_TLS_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CliConfigError, match=variable):
        cli_settings.tls()
