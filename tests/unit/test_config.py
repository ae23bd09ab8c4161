"""Service settings: built from the environment, refusing bad values by variable name."""

from __future__ import annotations

import pytest

from service.config import ConfigError, ServiceSettings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    s = ServiceSettings.from_env({})
    assert s.listen == "127.0.0.1:50051"
    assert s.database_url is None and s.sync_secret is None and s.catalog_path is None


def test_short_secret_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="BILLING_WEBHOOK_SYNC_SECRET"):
        ServiceSettings.from_env({"BILLING_WEBHOOK_SYNC_SECRET": "short"})


def test_bad_listen_is_refused() -> None:
    with pytest.raises(ConfigError, match="ENTITLEMENTS_LISTEN"):
        ServiceSettings.from_env({"ENTITLEMENTS_LISTEN": "nowhere"})


def test_values_are_read() -> None:
    s = ServiceSettings.from_env(
        {
            "DATABASE_URL": "postgresql://x/y",
            "ENTITLEMENTS_LISTEN": "0.0.0.0:6000",
            "ENTITLEMENTS_CATALOG": "c.toml",
            "BILLING_WEBHOOK_SYNC_SECRET": "s" * 32,
        }
    )
    assert (s.database_url, s.listen, s.catalog_path, s.sync_secret) == (
        "postgresql://x/y",
        "0.0.0.0:6000",
        "c.toml",
        "s" * 32,
    )
