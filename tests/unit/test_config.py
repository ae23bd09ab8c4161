"""Service settings: built from the environment, refusing bad values by variable name."""

from __future__ import annotations

import pytest

from entitlements_common.settings import ConfigError
from service.config import ServiceSettings

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


def test_reconciliation_is_off_without_clerk_secret_key() -> None:
    s = ServiceSettings.from_env({"CLERK_API_URL": "http://127.0.0.1:9/v1"})
    assert s.clerk is None and s.reconcile_interval_seconds == 3600


def test_clerk_settings_are_read_and_checked() -> None:
    s = ServiceSettings.from_env(
        {
            "CLERK_SECRET_KEY": "sk_test_abc",
            "CLERK_API_URL": "http://127.0.0.1:9/v1",
            "ENTITLEMENTS_RECONCILE_INTERVAL_SECONDS": "0",
        }
    )
    assert s.clerk is not None and s.clerk.base_url == "http://127.0.0.1:9/v1"
    for loopback in ("http://localhost:9/v1", "http://[::1]:9/v1"):
        local = ServiceSettings.from_env({"CLERK_SECRET_KEY": "sk_a", "CLERK_API_URL": loopback})
        assert local.clerk is not None and local.clerk.base_url == loopback
    assert s.reconcile_interval_seconds == 0
    assert ServiceSettings.from_env({"CLERK_SECRET_KEY": "sk_x"}).clerk.base_url.startswith(  # type: ignore[union-attr]
        "https://api.clerk.com"
    )
    for env, name in (
        ({"CLERK_SECRET_KEY": "sk_a", "CLERK_API_URL": "ftp://x"}, "CLERK_API_URL"),
        ({"CLERK_SECRET_KEY": "sk_a", "CLERK_API_URL": "http://api.clerk.com/v1"}, "https"),
        ({"CLERK_SECRET_KEY": "sk_a", "CLERK_API_URL": "http://10.0.0.8/v1"}, "https"),
        ({"CLERK_SECRET_KEY": "sk a"}, "CLERK_SECRET_KEY"),
        ({"ENTITLEMENTS_RECONCILE_INTERVAL_SECONDS": "-5"}, "RECONCILE_INTERVAL"),
    ):
        with pytest.raises(ConfigError, match=name):
            ServiceSettings.from_env(env)


def test_sync_secret_may_list_several_during_rotation() -> None:
    from webhook_gateway.config import GatewaySettings

    both = f"{'a' * 32}, {'b' * 32}"
    assert ServiceSettings.from_env({"BILLING_WEBHOOK_SYNC_SECRET": both}).sync_secret == both
    gateway = GatewaySettings.from_env({"BILLING_WEBHOOK_SYNC_SECRET": both})
    assert gateway.sync_secret == "a" * 32  # callers send the first
    with pytest.raises(ConfigError, match="per secret"):
        ServiceSettings.from_env({"BILLING_WEBHOOK_SYNC_SECRET": f"{'a' * 32} short"})


def test_metrics_listen_has_a_default_can_be_turned_off_and_is_checked() -> None:
    assert ServiceSettings.from_env({}).metrics_listen == "127.0.0.1:9464"
    assert ServiceSettings.from_env({}).metrics
    off = ServiceSettings.from_env({"ENTITLEMENTS_METRICS_LISTEN": "off"})
    assert off.metrics_listen is None and not off.metrics
    env = {"ENTITLEMENTS_METRICS_LISTEN": "0.0.0.0:9100"}
    assert ServiceSettings.from_env(env).metrics_listen == "0.0.0.0:9100"
    for bad in ("9100", "host:", "host:99999", "::"):
        with pytest.raises(ConfigError, match="ENTITLEMENTS_METRICS_LISTEN"):
            ServiceSettings.from_env({"ENTITLEMENTS_METRICS_LISTEN": bad})


def test_tracing_is_off_unless_an_otlp_endpoint_is_set() -> None:
    assert not ServiceSettings.from_env({}).tracing
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        assert ServiceSettings.from_env({name: "http://collector:4318"}).tracing
        with pytest.raises(ConfigError, match=name):
            ServiceSettings.from_env({name: "collector:4318"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        ServiceSettings.from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "json"}
        )


def test_the_unknown_plan_policy_is_read_and_checked() -> None:
    from service.domain.unknown_plans import UnknownPlanPolicy

    assert ServiceSettings.from_env({}).unknown_plan is UnknownPlanPolicy.DEFAULT  # TC-09
    keep = ServiceSettings.from_env({"ENTITLEMENTS_UNKNOWN_PLAN": "keep"})
    assert keep.unknown_plan is UnknownPlanPolicy.KEEP
    with pytest.raises(ConfigError, match="ENTITLEMENTS_UNKNOWN_PLAN must be default or keep"):
        ServiceSettings.from_env({"ENTITLEMENTS_UNKNOWN_PLAN": "free"})
