"""Settings shared by every client: TLS (`Tls`), the channel's keepalive options, `connect`,
and the bearer header a read token (or the sync secret) travels in. No I/O beyond reading the
TLS files named."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from entitlements_client._errors import ClientConfigError

# Client keepalive: a ping every 10 s even while idle, the connection dropped when no answer
# comes within 5 s (the service permits pings every 5 s).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000


def _read(path: str | Path | None, name: str) -> bytes | None:
    if path is None or path == "":
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientConfigError(f"{name}={path}: cannot be read ({exc.strerror})") from None


def _set(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, None when unset or blank: the rule of the service's settings
    (entitlements_common.env.Env.raw), which this distribution cannot import."""
    value = env.get(name)
    return value if value and value.strip() else None


@dataclass(frozen=True)
class Tls:
    """TLS to the service: `ca` (PEM) trusts its certificate; `cert` + `key` add a client
    certificate (mutual TLS). The one client TLS type: the CLI and the webhook gateway read
    theirs with `from_env` (an error names the variable)."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> Tls:
        if (cert is None) != (key is None):
            raise ClientConfigError("a client certificate and its key go together")
        ca_pem = _read(ca, "ca")
        assert ca_pem is not None
        return cls(ca_pem, _read(cert, "cert"), _read(key, "key"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tls | None:
        """ENTITLEMENTS_TLS_CA, ENTITLEMENTS_TLS_CLIENT_CERT, ENTITLEMENTS_TLS_CLIENT_KEY."""
        env = os.environ if env is None else env
        ca, cert, key = (
            _set(env, f"ENTITLEMENTS_TLS_{name}") for name in ("CA", "CLIENT_CERT", "CLIENT_KEY")
        )
        if ca is None:
            if cert or key:
                raise ClientConfigError("ENTITLEMENTS_TLS_CLIENT_CERT needs ENTITLEMENTS_TLS_CA")
            return None
        if (cert is None) != (key is None):
            raise ClientConfigError(
                "ENTITLEMENTS_TLS_CLIENT_CERT and ENTITLEMENTS_TLS_CLIENT_KEY go together"
            )
        ca_pem = _read(ca, "ENTITLEMENTS_TLS_CA")
        assert ca_pem is not None
        cert_pem = _read(cert, "ENTITLEMENTS_TLS_CLIENT_CERT")
        return cls(ca_pem, cert_pem, _read(key, "ENTITLEMENTS_TLS_CLIENT_KEY"))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def connect(target: str, tls: Tls | None = None) -> grpc.Channel:
    """A blocking channel to the service with this library's keepalive and TLS settings (what
    `EntitlementsClient` and `AdminClient` use; for calls of your own on `entitlements.v1`'s
    stubs, as the `entitlements` CLI makes)."""
    options = channel_options()
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=options)


def first_secret(listed: str | None) -> str | None:
    """The first of a comma- or space-separated list of secrets (the one to send while the
    server accepts several, during a rotation); None when there is none."""
    return next(iter((listed or "").replace(",", " ").split()), None)


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The bearer header for `token` (the read token the service requires, its
    ENTITLEMENTS_READ_TOKEN). Without `token=`, the first token of ENTITLEMENTS_READ_TOKEN in
    this process's environment, if set."""
    if token is None:
        token = first_secret(os.environ.get("ENTITLEMENTS_READ_TOKEN"))
    return (("authorization", f"Bearer {token}"),) if token else ()
