"""TLS and mutual TLS for gRPC: server credentials for the service, channel credentials for
its clients (gateway, CLI). Paths come from the environment; files are read once at start."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

from entitlements_common.settings import ConfigError


def _read(env: Mapping[str, str], name: str) -> bytes | None:
    path = env.get(name)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}={path}: cannot be read ({exc.strerror})") from None


@dataclass(frozen=True)
class ServerTls:
    """ENTITLEMENTS_TLS_CERT + ENTITLEMENTS_TLS_KEY; with ENTITLEMENTS_TLS_CLIENT_CA, clients
    must present a certificate signed by that CA (mutual TLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerTls | None:
        cert = _read(env, "ENTITLEMENTS_TLS_CERT")
        key = _read(env, "ENTITLEMENTS_TLS_KEY")
        client_ca = _read(env, "ENTITLEMENTS_TLS_CLIENT_CA")
        if cert is None and key is None:
            if client_ca is not None:
                raise ConfigError(
                    "ENTITLEMENTS_TLS_CLIENT_CA needs ENTITLEMENTS_TLS_CERT and "
                    "ENTITLEMENTS_TLS_KEY"
                )
            return None
        if cert is None or key is None:
            raise ConfigError("ENTITLEMENTS_TLS_CERT and ENTITLEMENTS_TLS_KEY must be set together")
        return cls(cert, key, client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """ENTITLEMENTS_TLS_CA (the server's CA); ENTITLEMENTS_TLS_CLIENT_CERT/_KEY for mutual TLS."""

    ca: bytes
    client_cert: bytes | None = None
    client_key: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientTls | None:
        ca = _read(env, "ENTITLEMENTS_TLS_CA")
        cert = _read(env, "ENTITLEMENTS_TLS_CLIENT_CERT")
        key = _read(env, "ENTITLEMENTS_TLS_CLIENT_KEY")
        if (cert is None) != (key is None):
            raise ConfigError(
                "ENTITLEMENTS_TLS_CLIENT_CERT and ENTITLEMENTS_TLS_CLIENT_KEY must be set together"
            )
        if ca is None:
            if cert is not None:
                raise ConfigError("ENTITLEMENTS_TLS_CLIENT_CERT needs ENTITLEMENTS_TLS_CA")
            return None
        return cls(ca, cert, key)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )


def aio_channel(
    target: str,
    tls: ClientTls | None,
    options: list[tuple[str, int]] | None = None,
    interceptors: Sequence[aio.ClientInterceptor] | None = None,
) -> aio.Channel:
    if tls is None:
        return aio.insecure_channel(target, options=options, interceptors=interceptors)
    return aio.secure_channel(target, tls.credentials(), options=options, interceptors=interceptors)


def sync_channel(target: str, tls: ClientTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials())
