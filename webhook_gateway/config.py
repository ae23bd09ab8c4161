"""Gateway configuration: a frozen dataclass built once from the environment.

Missing secrets do not stop the gateway from starting: it answers 500 "Server config error" and
fails /readyz, so the operator sees it and Svix keeps retrying until it is fixed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from entitlements_client import ClientConfigError, Tls
from entitlements_common.env import Env
from entitlements_common.settings import ConfigError, check_sync_secret, split_secrets

DEFAULT_GATEWAY_LISTEN = "127.0.0.1:8080"
DEFAULT_TARGET = "127.0.0.1:50051"
SIGNING_SECRET_VARS = ("CLERK_WEBHOOK_SIGNING_SECRET", "CLERK_WEBHOOK_SECRET")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_INFLIGHT_BYTES = 16 * 1024 * 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    host: str
    port: int
    target: str
    signing_secrets: tuple[str, ...]
    sync_secret: str | None
    forward_timeout_seconds: float = 10.0
    retry_after_seconds: int = 5
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Body bytes buffered at once by all requests together (webhook_gateway/budget.py).
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    body_timeout_seconds: float = 10.0
    # aiohttp's keep-alive timer also runs from the moment a connection opens: a client that
    # has not completed its request headers by then (slow-loris) is disconnected.
    idle_timeout_seconds: float = 15.0
    tls: Tls | None = None

    @property
    def configured(self) -> bool:
        return bool(self.signing_secrets) and self.sync_secret is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        read = Env(env)
        host, _, port = read.address("GATEWAY_LISTEN", DEFAULT_GATEWAY_LISTEN).rpartition(":")
        sync_secret = read.text("BILLING_WEBHOOK_SYNC_SECRET")
        check_sync_secret(sync_secret)
        if sync_secret is not None:
            sync_secret = split_secrets(sync_secret)[0]  # during a rotation: the first is sent
        timeout = read.seconds("GATEWAY_FORWARD_TIMEOUT_SECONDS", 10.0, maximum=14.9)
        body_timeout = read.seconds("GATEWAY_BODY_TIMEOUT_SECONDS", 10.0, maximum=300)
        idle_timeout = read.seconds("GATEWAY_IDLE_TIMEOUT_SECONDS", 15.0, maximum=300)
        max_body = read.integer(
            "GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 16 * MIB, unit="bytes"
        )
        inflight = read.integer(
            "GATEWAY_MAX_INFLIGHT_BYTES",
            DEFAULT_MAX_INFLIGHT_BYTES,
            256 * 1024,
            4096 * MIB,
            unit="bytes",
        )
        if inflight < 2 * max_body:
            raise ConfigError(
                f"GATEWAY_MAX_INFLIGHT_BYTES ({inflight}) must be at least twice "
                f"GATEWAY_MAX_BODY_BYTES ({max_body}): a quarter of it is kept for small bodies"
            )
        return cls(
            host=host,
            port=int(port),
            target=read.address("ENTITLEMENTS_TARGET", DEFAULT_TARGET),
            signing_secrets=signing_secrets_from_env(env),
            sync_secret=sync_secret,
            forward_timeout_seconds=timeout,
            max_body_bytes=max_body,
            max_inflight_bytes=inflight,
            body_timeout_seconds=body_timeout,
            idle_timeout_seconds=idle_timeout,
            tls=client_tls(env),
        )


def client_tls(env: Mapping[str, str]) -> Tls | None:
    """ENTITLEMENTS_TLS_CA, _CLIENT_CERT and _CLIENT_KEY, read by the client library's `Tls`;
    a wrong one is a ConfigError naming it."""
    try:
        return Tls.from_env(env)
    except ClientConfigError as exc:
        raise ConfigError(str(exc)) from None


def signing_secrets_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """Every `whsec_…` secret in CLERK_WEBHOOK_SIGNING_SECRET (or its alias), for rotation."""
    read = Env(env)
    for var in SIGNING_SECRET_VARS:
        if read.raw(var):
            return read.signing_secrets(var)
    return ()
