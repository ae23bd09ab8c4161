"""TLS and mutual TLS for the gRPC server: its credentials. Paths come from the environment;
files are read once at start. Clients (gateway, CLI) use the client library's `Tls`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

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
