"""Where the CLI's settings come from: the environment, else the `dev.env` that `make run`
wrote in its data directory (`ENTITLEMENTS_DATA_DIR`, default `.data`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from entitlements_cli.errors import ConfigError
from entitlements_client import ClientConfigError, Tls
from entitlements_client.core import first_secret, metadata

DEFAULT_TARGET = "127.0.0.1:50051"


def dev_env_file() -> Path:
    return Path(os.environ.get("ENTITLEMENTS_DATA_DIR") or ".data") / "dev.env"


def setting(name: str, default: str | None = None) -> str | None:
    """From the environment, else from `dev.env` written by `make run`."""
    if os.environ.get(name):
        return os.environ[name]
    path = dev_env_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); set {name} instead") from None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name and value.strip():
            return value.strip()
    return default


def target(args: argparse.Namespace) -> str:
    return str(args.target or setting("ENTITLEMENTS_TARGET", DEFAULT_TARGET))


def tls() -> Tls | None:
    try:
        return Tls.from_env(os.environ)
    except ClientConfigError as exc:
        raise ConfigError(str(exc)) from None


def read_auth() -> tuple[tuple[str, str], ...]:
    """The read token (the first of ENTITLEMENTS_READ_TOKEN) for EntitlementService calls."""
    return metadata(first_secret(setting("ENTITLEMENTS_READ_TOKEN")) or "")


def sync_secret() -> str:
    """The sync secret BillingSyncService calls carry (the first of a rotating list)."""
    secret = first_secret(setting("BILLING_WEBHOOK_SYNC_SECRET"))
    if secret is None:
        raise ConfigError(f"BILLING_WEBHOOK_SYNC_SECRET is not set (and no {dev_env_file()})")
    return secret
