"""ENTITLEMENTS_NOTIFY_*: outbound change notifications (SPEC §10.4); unset URL = off."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from svix.webhooks import Webhook

from entitlements_common.settings import ConfigError, split_secrets


@dataclass(frozen=True)
class NotifySettings:
    urls: tuple[str, ...]
    secrets: tuple[str, ...]  # every attempt is signed with each (rotation)
    timeout_seconds: float = 10.0
    max_backoff_seconds: float = 30.0
    give_up_seconds: float = 24 * 3600.0
    poll_seconds: float = 1.0
    concurrency: int = 8


def _seconds(env: Mapping[str, str], name: str, default: float, high: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= high:
        raise ConfigError(f"{name} must be a number of seconds in (0, {high:g}], got {raw!r}")
    return value


def _url(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"ENTITLEMENTS_NOTIFY_URL: {raw!r} is not an http(s) URL")
    return raw


def notify_settings(env: Mapping[str, str]) -> NotifySettings | None:
    """The notifier's settings; None without ENTITLEMENTS_NOTIFY_URL. Errors name the variable."""
    urls = tuple(dict.fromkeys(_url(u) for u in split_secrets(env.get("ENTITLEMENTS_NOTIFY_URL"))))
    if not urls:
        return None
    secrets = tuple(split_secrets(env.get("ENTITLEMENTS_NOTIFY_SECRET")))
    if not secrets:
        raise ConfigError(
            "ENTITLEMENTS_NOTIFY_SECRET must be set (whsec_…) when ENTITLEMENTS_NOTIFY_URL is"
        )
    for i, secret in enumerate(secrets):
        try:
            Webhook(secret)
        except Exception:
            raise ConfigError(
                f"ENTITLEMENTS_NOTIFY_SECRET: secret #{i + 1} is not a whsec_<base64> "
                "signing secret"
            ) from None
    concurrency_raw = (env.get("ENTITLEMENTS_NOTIFY_CONCURRENCY") or "8").strip()
    if not concurrency_raw.isdigit() or not 1 <= int(concurrency_raw) <= 256:
        raise ConfigError(
            f"ENTITLEMENTS_NOTIFY_CONCURRENCY must be in [1, 256], got {concurrency_raw!r}"
        )
    return NotifySettings(
        urls=urls,
        secrets=secrets,
        timeout_seconds=_seconds(env, "ENTITLEMENTS_NOTIFY_TIMEOUT_SECONDS", 10.0, 300.0),
        max_backoff_seconds=_seconds(env, "ENTITLEMENTS_NOTIFY_MAX_BACKOFF_SECONDS", 30.0, 3600.0),
        give_up_seconds=_seconds(
            env, "ENTITLEMENTS_NOTIFY_GIVE_UP_SECONDS", 86_400.0, 30 * 86_400.0
        ),
        poll_seconds=_seconds(env, "ENTITLEMENTS_NOTIFY_POLL_SECONDS", 1.0, 60.0),
        concurrency=int(concurrency_raw),
    )
