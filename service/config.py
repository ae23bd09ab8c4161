"""Service configuration: a frozen dataclass built once from the environment and validated,
each variable read through entitlements_common.env (the one reader the gateway and the CLI
use too: errors name the variable)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from entitlements_common.env import Env, host_port
from entitlements_common.settings import ConfigError, check_sync_secret, split_secrets
from entitlements_common.tracing import tracing_enabled
from service.adapters.clerk_api import DEFAULT_API_URL, ClerkApiSettings
from service.domain.catalog import Catalog, CatalogError, parse_catalog_text
from service.domain.unknown_plans import UnknownPlanPolicy
from service.entrypoints.message_limits import WATCH_MAX_SUBJECTS
from service.notify_config import NotifySettings, notify_settings

if TYPE_CHECKING:
    from entitlements_common.tls import ServerTls

DEFAULT_LISTEN = "127.0.0.1:50051"
# Prometheus /metrics (ENTITLEMENTS_METRICS_LISTEN; "off" turns it off). 9464 is the port
# OpenTelemetry's Prometheus exporters use by convention.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True)
class ServiceSettings:
    database_url: str | None
    listen: str
    catalog_path: str | None
    sync_secret: str | None
    data_dir: Path
    grace_seconds: float = 5.0
    health_interval_seconds: float = 1.0
    cache_enabled: bool = True
    cache_max_subjects: int = 100_000
    change_log_retention_seconds: float = 7 * 24 * 3600.0
    workers: int = 1
    payload_retention_seconds: float = 90 * 24 * 3600.0
    # Recorded usage calls older than this are rolled up into one total per subject and limit
    # (their idempotency keys are forgotten then).
    usage_retention_seconds: float = 90 * 24 * 3600.0
    tls: ServerTls | None = None
    # Reconciliation with Clerk's Backend API: off (None) without CLERK_SECRET_KEY.
    clerk: ClerkApiSettings | None = None
    reconcile_interval_seconds: float = 3600.0
    # WatchEntitlements: streams per replica and per client address (over: RESOURCE_EXHAUSTED).
    watch_max_streams: int = 10_000
    watch_max_streams_per_peer: int = 2_000
    # Subjects one WatchEntitlements request may name (over: RESOURCE_EXHAUSTED).
    watch_max_subjects: int = WATCH_MAX_SUBJECTS
    # gRPC port: request messages being received at once (each up to the largest method cap,
    # message_limits.py), and RPCs in progress at once (Watch streams included).
    max_receiving: int = 128
    max_concurrent_rpcs: int = 12_000
    # Connections are closed after this age (clients reconnect and resume, gracefully).
    max_connection_age_seconds: int = 1800
    # A delivery naming a Clerk plan the catalog lacks: the default plan, or held back.
    unknown_plan: UnknownPlanPolicy = UnknownPlanPolicy.DEFAULT
    # Bearer tokens required on EntitlementService (none: the read side is open).
    read_tokens: tuple[str, ...] = ()
    # ENTITLEMENTS_HTTP_LISTEN: EntitlementService over Connect / gRPC-Web (None: off).
    http_listen: str | None = None
    # Apply pending migrations at start (false: replicas refuse a schema that lacks one; the
    # migration runs as `entitlements-service migrate`, e.g. a Kubernetes Job).
    migrate_on_start: bool = True
    # The NOTIFY listener's own connection (a session, never a transaction-pooling PgBouncer);
    # None: DATABASE_URL.
    listen_database_url: str | None = None
    # SO_REUSEPORT: only for --workers, whose processes share one port on purpose.
    reuse_port: bool = False
    # ENTITLEMENTS_METRICS_LISTEN: host:port of Prometheus /metrics (None: off; from the
    # environment it defaults to DEFAULT_METRICS_LISTEN).
    metrics_listen: str | None = None
    # Whether RPCs and gauges are counted at all: with ENTITLEMENTS_METRICS_LISTEN set, or in a
    # --workers worker whose supervisor serves the scrape; off, the hot path counts nothing.
    metrics: bool = False
    # OpenTelemetry tracing: on when OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_ form) is set.
    tracing: bool = False
    # The HTTP listeners' bounds (Connect and metrics; README "Resource bounds"): seconds to
    # receive a request's headers (and a kept-alive connection's idle time), seconds to receive
    # a Connect request's body, and the Connect body bytes in flight in one process.
    http_header_timeout_seconds: float = 5.0
    http_body_timeout_seconds: float = 10.0
    http_body_budget_bytes: int = 16 * 1024 * 1024
    # ENTITLEMENTS_NOTIFY_URL / _SECRET: outbound change notifications (None: off).
    notify: NotifySettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        from entitlements_common.tls import ServerTls

        read = Env(env)
        secret = read.text("BILLING_WEBHOOK_SYNC_SECRET")
        check_sync_secret(secret)
        tls = ServerTls.from_env(os.environ if env is None else env)
        metrics_at = read.optional_address("ENTITLEMENTS_METRICS_LISTEN", DEFAULT_METRICS_LISTEN)
        day = 24 * 3600
        return cls(
            database_url=read.text("DATABASE_URL"),
            listen=read.address("ENTITLEMENTS_LISTEN", DEFAULT_LISTEN),
            catalog_path=read.text("ENTITLEMENTS_CATALOG"),
            unknown_plan=read.choice(
                "ENTITLEMENTS_UNKNOWN_PLAN", UnknownPlanPolicy, UnknownPlanPolicy.DEFAULT
            ),
            sync_secret=secret,
            data_dir=Path(read.text("ENTITLEMENTS_DATA_DIR", ".data") or ".data"),
            cache_enabled=read.choice("ENTITLEMENTS_CACHE", _OnOff, _OnOff.ON) is _OnOff.ON,
            cache_max_subjects=read.integer("ENTITLEMENTS_CACHE_MAX_SUBJECTS", 100_000),
            change_log_retention_seconds=float(
                read.integer("ENTITLEMENTS_CHANGE_LOG_RETENTION_SECONDS", 7 * day, unit="seconds")
            ),
            workers=read.integer("ENTITLEMENTS_WORKERS", 1),
            usage_retention_seconds=float(
                read.integer("ENTITLEMENTS_USAGE_RETENTION_SECONDS", 90 * day, unit="seconds")
            ),
            payload_retention_seconds=float(
                read.integer("ENTITLEMENTS_PAYLOAD_RETENTION_SECONDS", 90 * day, unit="seconds")
            ),
            tls=tls,
            clerk=clerk_api_settings(read),
            reconcile_interval_seconds=float(
                read.integer(
                    "ENTITLEMENTS_RECONCILE_INTERVAL_SECONDS", 3600, minimum=0, unit="seconds"
                )
            ),
            watch_max_streams=read.integer("ENTITLEMENTS_WATCH_MAX_STREAMS", 10_000),
            watch_max_streams_per_peer=read.integer(
                "ENTITLEMENTS_WATCH_MAX_STREAMS_PER_PEER", 2_000
            ),
            watch_max_subjects=read.integer("ENTITLEMENTS_WATCH_MAX_SUBJECTS", WATCH_MAX_SUBJECTS),
            max_receiving=read.integer("ENTITLEMENTS_GRPC_MAX_RECEIVING", 128),
            max_concurrent_rpcs=max_concurrent_rpcs(read),
            max_connection_age_seconds=read.integer(
                "ENTITLEMENTS_MAX_CONNECTION_AGE_SECONDS", 1800, unit="seconds"
            ),
            read_tokens=read_tokens(read.raw("ENTITLEMENTS_READ_TOKEN")),
            http_listen=http_listen(read.raw("ENTITLEMENTS_HTTP_LISTEN"), tls=tls),
            migrate_on_start=read.flag("ENTITLEMENTS_MIGRATE_ON_START", True),
            listen_database_url=read.text("ENTITLEMENTS_LISTEN_DATABASE_URL"),
            metrics_listen=metrics_at,
            metrics=metrics_at is not None,
            tracing=tracing_enabled(os.environ if env is None else env),
            http_header_timeout_seconds=read.seconds(
                "ENTITLEMENTS_HTTP_HEADER_TIMEOUT_SECONDS", 5.0
            ),
            http_body_timeout_seconds=read.seconds("ENTITLEMENTS_HTTP_BODY_TIMEOUT_SECONDS", 10.0),
            http_body_budget_bytes=read.integer(
                "ENTITLEMENTS_HTTP_BODY_BUDGET_BYTES", 16 * 1024 * 1024, unit="bytes"
            ),
            notify=notify_settings(env),
        )


class _OnOff(StrEnum):
    ON = "on"
    OFF = "off"


def max_concurrent_rpcs(read: Env) -> int:
    """ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS: RPCs in progress at once on the gRPC port (over:
    RESOURCE_EXHAUSTED); Watch streams count, so it must leave room beyond them."""
    watch = read.integer("ENTITLEMENTS_WATCH_MAX_STREAMS", 10_000)
    value = read.integer("ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS", watch + 2_000)
    if value <= watch:
        raise ConfigError(
            f"ENTITLEMENTS_GRPC_MAX_CONCURRENT_RPCS ({value}) must be larger than "
            f"ENTITLEMENTS_WATCH_MAX_STREAMS ({watch}): Watch streams count among them"
        )
    return value


def clerk_api_settings(read: Env | Mapping[str, str]) -> ClerkApiSettings | None:
    """CLERK_SECRET_KEY (unset: no reconciliation) and CLERK_API_URL (a fake one in tests)."""
    read = read if isinstance(read, Env) else Env(read)
    key = read.text("CLERK_SECRET_KEY") or ""
    if not key:
        return None
    if any(c.isspace() for c in key) or not key.isprintable():
        raise ConfigError(
            "CLERK_SECRET_KEY must be one token without spaces (sk_live_… / sk_test_…)"
        )
    url = read.text("CLERK_API_URL", DEFAULT_API_URL) or DEFAULT_API_URL
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"CLERK_API_URL must be an https URL, got {url!r}")
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname or ""):
        # The secret key rides in every request: plain http only to this machine (tests).
        raise ConfigError(f"CLERK_API_URL must be https (http only for loopback), got {url!r}")
    return ClerkApiSettings(secret_key=key, base_url=url)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_listen(raw: str | None, tls: object | None = None) -> str | None:
    """ENTITLEMENTS_HTTP_LISTEN: host:port of the Connect / gRPC-Web listener; unset: off."""
    if not (raw or "").strip():
        return None
    listen = host_port("ENTITLEMENTS_HTTP_LISTEN", raw or "")
    if tls is not None:
        # Never plain HTTP beside a TLS-only gRPC port; terminate TLS in front of it instead.
        raise ConfigError(
            "ENTITLEMENTS_HTTP_LISTEN does not serve TLS yet: with ENTITLEMENTS_TLS_CERT set, "
            "leave it unset or put a TLS-terminating proxy in front of it"
        )
    return listen


MIN_READ_TOKEN_CHARS = 16


def read_tokens(raw: str | None) -> tuple[str, ...]:
    """ENTITLEMENTS_READ_TOKEN: one or more bearer tokens (spaces/commas; several while
    rotating); each at least 16 characters."""
    tokens = tuple(split_secrets(raw))
    for token in tokens:
        if len(token) < MIN_READ_TOKEN_CHARS or not token.isprintable():
            raise ConfigError(
                f"ENTITLEMENTS_READ_TOKEN: each token must be at least {MIN_READ_TOKEN_CHARS} "
                "printable characters"
            )
    return tokens


def load_catalog(path: str | Path | None) -> Catalog:
    """The catalog file at `path`, or the bundled default; errors name ENTITLEMENTS_CATALOG."""
    if path is None:
        text = resources.files("service").joinpath("default_catalog.toml").read_text("utf-8")
        return parse_catalog_text(text, "bundled catalog")
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise CatalogError(
            f"ENTITLEMENTS_CATALOG={path}: cannot be read ({exc.strerror})"
        ) from None
    return parse_catalog_text(text, f"ENTITLEMENTS_CATALOG={path}")
