"""ENTITLEMENTS_NOTIFY_*: outbound change notifications (SPEC §10.4); unset URL = off."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from entitlements_common.env import Env
from entitlements_common.settings import ConfigError


@dataclass(frozen=True)
class NotifySettings:
    urls: tuple[str, ...]
    secrets: tuple[str, ...]  # every attempt is signed with each (rotation)
    timeout_seconds: float = 10.0
    max_backoff_seconds: float = 30.0
    give_up_seconds: float = 24 * 3600.0
    poll_seconds: float = 1.0
    concurrency: int = 8


def _url(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"ENTITLEMENTS_NOTIFY_URL: {raw!r} is not an http(s) URL")
    return raw


def notify_settings(env: Mapping[str, str] | None = None) -> NotifySettings | None:
    """The notifier's settings; None without ENTITLEMENTS_NOTIFY_URL. Errors name the variable."""
    read = Env(env)
    urls = tuple(dict.fromkeys(_url(u) for u in read.secrets("ENTITLEMENTS_NOTIFY_URL")))
    if not urls:
        return None
    secrets = read.signing_secrets("ENTITLEMENTS_NOTIFY_SECRET")
    if not secrets:
        raise ConfigError(
            "ENTITLEMENTS_NOTIFY_SECRET must be set (whsec_…) when ENTITLEMENTS_NOTIFY_URL is"
        )
    return NotifySettings(
        urls=urls,
        secrets=secrets,
        timeout_seconds=read.seconds("ENTITLEMENTS_NOTIFY_TIMEOUT_SECONDS", 10.0, 300.0),
        max_backoff_seconds=read.seconds("ENTITLEMENTS_NOTIFY_MAX_BACKOFF_SECONDS", 30.0, 3600.0),
        give_up_seconds=read.seconds(
            "ENTITLEMENTS_NOTIFY_GIVE_UP_SECONDS", 86_400.0, 30 * 86_400.0
        ),
        poll_seconds=read.seconds("ENTITLEMENTS_NOTIFY_POLL_SECONDS", 1.0, 60.0),
        concurrency=read.integer("ENTITLEMENTS_NOTIFY_CONCURRENCY", 8, 1, 256),
    )
