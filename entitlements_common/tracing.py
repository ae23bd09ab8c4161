"""OpenTelemetry tracing for the gateway and the service, off unless an OTLP endpoint is set.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, each process
exports spans over OTLP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the default, or
`grpc`), sampled by `OTEL_TRACES_SAMPLER` as the SDK reads it; `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` name the process. The SDK is imported only then, so a process without
tracing pays nothing for it.

Background work (health pings, the change follower, the NOTIFY listener's keepalive) runs SQL
outside any request: such a client span with no parent is not sampled (otel_sdk.py),
so a trace is always a request's — the gateway's POST through the forwarded gRPC call to its SQL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from entitlements_common.settings import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("http/protobuf", "grpc")


def tracing_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether an OTLP endpoint is configured; a malformed one is a `ConfigError` naming it."""
    env = os.environ if env is None else env
    configured = False
    for name in ENDPOINT_VARS:
        raw = (env.get(name) or "").strip()
        if not raw:
            continue
        parsed = urlsplit(raw)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
        configured = True
    for name in PROTOCOL_VARS:
        protocol = (env.get(name) or "").strip()
        if protocol and protocol not in PROTOCOLS:
            raise ConfigError(f"{name} must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return configured


def otlp_protocol(env: Mapping[str, str]) -> str:
    for name in PROTOCOL_VARS:
        if protocol := (env.get(name) or "").strip():
            return protocol
    return "http/protobuf"


def tracer_provider_from_env(
    service_name: str, env: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """The process's tracer provider, or None when tracing is off."""
    env = os.environ if env is None else env
    if not tracing_enabled(env):
        return None
    from entitlements_common.otel_sdk import new_tracer_provider, otlp_exporter

    return new_tracer_provider(service_name, otlp_exporter(otlp_protocol(env)), env=env)
