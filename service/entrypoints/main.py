"""`entitlements-service`: the command line (serve, or `migrate`), and the exit codes of
launch.py for whatever stops it before it serves; the server itself is server.py."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from entitlements_common.settings import ConfigError
from service.adapters.postgres.connect_errors import DatabaseUrlInvalid
from service.adapters.postgres.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresMissing,
    start_embedded_postgres,
)
from service.adapters.postgres.migrate import SchemaBehind
from service.application.ports import StoreUnavailable
from service.config import ServiceSettings, load_catalog
from service.domain.catalog import CatalogError
from service.entrypoints.launch import (
    EXIT_CONFIG,
    EXIT_DATABASE_UNAVAILABLE,
    EXIT_PORT_IN_USE,
    EXIT_SCHEMA_BEHIND,
    PortInUse,
    ensure_port_free,
    migrate_database,
    probe_database,
)
from service.entrypoints.notifier_process import serve_notifier
from service.entrypoints.server import configure_logging, serve

log = logging.getLogger("entitlements.service")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="entitlements-service", description="the plan-entitlement gRPC service"
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate", "notify"),
        default="serve",
        help="serve (default); migrate: apply pending migrations and exit; notify: send change "
        "notifications only (ENTITLEMENTS_NOTIFY_URL), as a process of their own",
    )
    parser.add_argument("--listen", help="host:port (overrides ENTITLEMENTS_LISTEN)")
    parser.add_argument("--database-url", help="PostgreSQL DSN (overrides DATABASE_URL)")
    parser.add_argument("--catalog", help="catalog TOML (overrides ENTITLEMENTS_CATALOG)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--workers", type=int, help="processes serving one port (overrides ENTITLEMENTS_WORKERS)"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="answer every read from PostgreSQL (measurement)"
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())
    try:
        settings = ServiceSettings.from_env()
        settings = replace(
            settings,
            listen=args.listen or settings.listen,
            database_url=args.database_url or settings.database_url,
            catalog_path=args.catalog or settings.catalog_path,
            workers=args.workers or settings.workers,
            cache_enabled=settings.cache_enabled and not args.no_cache,
        )
        if settings.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if args.command == "migrate":
            sys.exit(run_migrate(settings))
        if args.command == "notify":
            asyncio.run(serve_notifier(settings))
            return
        load_catalog(settings.catalog_path)  # refuse a bad catalog before forking anything
        # Before any migration: a second instance on a held port changes nothing.
        for listen in (settings.listen, settings.http_listen, settings.metrics_listen):
            if listen is not None:
                ensure_port_free(listen)
        if settings.workers > 1:
            from service.entrypoints.workers import run_workers

            if settings.database_url is not None:  # refused once here, not once per worker
                asyncio.run(probe_database(settings.database_url))

            sys.exit(run_workers(settings, args.log_level.upper()))
        asyncio.run(serve(settings))
    except (ConfigError, CatalogError, DatabaseUrlInvalid, EmbeddedPostgresMissing) as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(EXIT_CONFIG)
    except StoreUnavailable as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(EXIT_DATABASE_UNAVAILABLE)
    except PortInUse as exc:
        print(f"entitlements-service: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PORT_IN_USE)
    except SchemaBehind as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(EXIT_SCHEMA_BEHIND)
    except KeyboardInterrupt:
        pass


def run_migrate(settings: ServiceSettings) -> int:
    """`entitlements-service migrate`: apply pending migrations to DATABASE_URL (or the
    embedded PostgreSQL) and exit 0; main() turns a database that cannot be reached or refuses
    into exit 3, and a URL that cannot be read into exit 2, as for the service."""
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        embedded = start_embedded_postgres(settings.data_dir)
        dsn = embedded.uri
    try:
        applied = asyncio.run(migrate_database(dsn))
    finally:
        if embedded is not None:
            embedded.stop()
    log.info(
        "migrations: %s",
        f"applied {', '.join(f'{v:04d}' for v in applied)}" if applied else "already up to date",
    )
    return 0


if __name__ == "__main__":
    main()
