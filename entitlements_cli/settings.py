"""Where the CLI's settings come from: the environment, else the `dev.env` that `make run`
wrote in its data directory (`ENTITLEMENTS_DATA_DIR`, default `.data`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from entitlements_cli.errors import ConfigError
from entitlements_client import ClientConfigError, Tls
from entitlements_common.env import Env, host_port
from entitlements_common.settings import ConfigError as SettingError
from entitlements_common.settings import bearer, split_secrets

DEFAULT_TARGET = "127.0.0.1:50051"


def dev_env_file() -> Path:
    return Path(os.environ.get("ENTITLEMENTS_DATA_DIR") or ".data") / "dev.env"


def settings(asking: str = "the variables") -> Env:
    """The environment over `dev.env` (a variable set, not blank, wins), read by the rules
    every part shares (entitlements_common.env)."""
    path = dev_env_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        why = f"{path}: cannot be read ({exc.strerror}); set {asking} instead"
        raise ConfigError(why) from None
    written = (line.partition("=") for line in text.splitlines())
    found = {key.strip(): value.strip() for key, _, value in written if key.strip()}
    return Env(found | {k: v for k, v in os.environ.items() if v.strip()})


def setting(name: str, default: str | None = None) -> str | None:
    """From the environment, else from `dev.env` written by `make run`."""
    return settings(name).text(name, default)


def target(args: argparse.Namespace) -> str:
    """--target, else ENTITLEMENTS_TARGET: host:port, checked as the service and the gateway
    check their addresses (entitlements_common.env)."""
    try:
        if args.target:
            return host_port("--target", str(args.target))
        return settings("ENTITLEMENTS_TARGET").address("ENTITLEMENTS_TARGET", DEFAULT_TARGET)
    except SettingError as exc:
        raise ConfigError(str(exc)) from None


def tls() -> Tls | None:
    try:
        return Tls.from_env(os.environ)
    except ClientConfigError as exc:
        raise ConfigError(str(exc)) from None


def read_auth() -> tuple[tuple[str, str], ...]:
    """The read token (the first of ENTITLEMENTS_READ_TOKEN) for EntitlementService calls."""
    return bearer(setting("ENTITLEMENTS_READ_TOKEN"))


def sync_secret() -> str:
    """The sync secret BillingSyncService calls carry (the first of a rotating list)."""
    secrets = split_secrets(setting("BILLING_WEBHOOK_SYNC_SECRET"))
    if not secrets:
        raise ConfigError(f"BILLING_WEBHOOK_SYNC_SECRET is not set (and no {dev_env_file()})")
    return secrets[0]
