"""Settings shared by the service, the gateway and the CLI: errors and secret lists."""

from __future__ import annotations

MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """A setting is wrong; the message names the variable."""


def split_secrets(raw: str | None) -> list[str]:
    """A secret setting may list several secrets (spaces or commas) during a rotation: the
    receiving side accepts any of them, the sending side uses the first."""
    return (raw or "").replace(",", " ").split()


def bearer(secret_list: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the first secret of a list as a bearer token (none: empty)."""
    secrets = split_secrets(secret_list)
    return (("authorization", f"Bearer {secrets[0]}"),) if secrets else ()


def check_sync_secret(secret: str | None) -> None:
    """BILLING_WEBHOOK_SYNC_SECRET: every secret of the list at least 32 characters."""
    if secret is None:
        return
    tokens = split_secrets(secret)
    if not tokens:
        raise ConfigError("BILLING_WEBHOOK_SYNC_SECRET is blank")
    for token in tokens:
        if len(token) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"BILLING_WEBHOOK_SYNC_SECRET must be at least {MIN_SECRET_LENGTH} characters "
                f"per secret (got {len(token)})"
            )
