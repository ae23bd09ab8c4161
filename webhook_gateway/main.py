"""`entitlements-gateway`: the internet-facing webhook receiver."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from aiohttp import web

from entitlements_common.settings import ConfigError
from entitlements_common.tracing import tracer_provider_from_env, tracing_enabled
from webhook_gateway import allocator
from webhook_gateway.app import SERVER_OPTIONS, WEBHOOK_PATH, create_app
from webhook_gateway.config import GatewaySettings
from webhook_gateway.listen import listening_socket

log = logging.getLogger("entitlements.gateway")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="entitlements-gateway", description=__doc__)
    parser.add_argument("--listen", help="host:port (overrides GATEWAY_LISTEN)")
    parser.add_argument("--target", help="service host:port (overrides ENTITLEMENTS_TARGET)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        settings = GatewaySettings.from_env()
        if args.listen:
            host, _, port = args.listen.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--listen must be host:port, got {args.listen!r}")
            settings = replace(settings, host=host, port=int(port))
        if args.target:
            settings = replace(settings, target=args.target)
        tracing_enabled()  # a malformed OTEL_EXPORTER_OTLP_* setting is refused here
    except ConfigError as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(2)
    if not settings.configured:
        log.error(
            "Server config error: CLERK_WEBHOOK_SIGNING_SECRET and BILLING_WEBHOOK_SYNC_SECRET "
            "must both be set; answering 500 to every delivery until they are"
        )
    log.info(
        "entitlements-gateway listening on http://%s:%d%s, forwarding to %s (%d signing secret%s)",
        settings.host,
        settings.port,
        WEBHOOK_PATH,
        settings.target,
        len(settings.signing_secrets),
        "" if len(settings.signing_secrets) == 1 else "s",
    )
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        log.error("refusing to start: cannot listen on %s: %s", where, exc.strerror)
        sys.exit(2)
    allocator.fix_mmap_threshold()
    provider = tracer_provider_from_env("entitlements-gateway")
    web.run_app(
        create_app(settings, provider),
        sock=sock,
        shutdown_timeout=10,
        keepalive_timeout=settings.idle_timeout_seconds,
        print=None,
        access_log=None,
        **SERVER_OPTIONS,
    )
    if provider is not None:
        provider.shutdown()  # exports the spans still queued
    log.info("stopped")


if __name__ == "__main__":
    main()
