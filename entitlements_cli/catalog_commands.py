"""`entitlements catalog validate FILE` and `entitlements catalog import`: the two catalog
commands that need no running service. They use the service's own catalog parser, so a file
`validate` accepts is one the service starts with, and the service's polite Clerk client.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from entitlements_cli.errors import CliError, ConfigError, UsageError
from entitlements_cli.output import dump_json
from entitlements_cli.settings import setting
from entitlements_common.settings import ConfigError as SettingError
from service.adapters.clerk_api import ClerkApi, ClerkApiError
from service.config import clerk_api_settings
from service.domain.catalog import Catalog, CatalogError, parse_catalog_text
from service.domain.catalog_import import catalog_from_clerk_plans

# A catalog is a few kB; a larger "catalog" is a wrong path, refused before it is read.
MAX_CATALOG_BYTES = 1024 * 1024


def _read(path: str) -> str:
    file = Path(path)
    try:
        if file.stat().st_size > MAX_CATALOG_BYTES:
            raise UsageError(f"{path}: larger than {MAX_CATALOG_BYTES} bytes: not a catalog")
        return file.read_text("utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _summary(catalog: Catalog) -> str:
    metered = f" ({len(catalog.meters)} metered)" if catalog.meters else ""
    return (
        f"{_count(len(catalog.plans), 'plan')} "
        f"({', '.join(p.name for p in catalog.plans_by_rank())}; "
        f"default {catalog.default_plan_name}), {_count(len(catalog.features), 'feature')}, "
        f"{_count(len(catalog.limit_names), 'limit')}{metered}"
    )


def cmd_catalog_validate(args: argparse.Namespace) -> int:
    """Exit 0 valid (warnings allowed), 1 invalid, 2 unreadable."""
    text = _read(args.file)
    try:
        catalog = parse_catalog_text(text, args.file)
    except CatalogError as exc:
        if args.json:
            dump_json({"file": args.file, "valid": False, "errors": list(exc.problems)})
        else:
            for problem in exc.problems:
                print(f"error: {problem}")
            print(f"{args.file}: invalid")
        return 1
    if args.json:
        dump_json(
            {
                "file": args.file,
                "valid": True,
                "errors": [],
                "warnings": list(catalog.warnings),
                "plans": [p.name for p in catalog.plans_by_rank()],
                "default_plan": catalog.default_plan_name,
                "fingerprint": catalog.fingerprint,
            }
        )
        return 0
    for warning in catalog.warnings:
        print(f"warning: {args.file}: {warning}")
    print(f"{args.file}: valid: {_summary(catalog)}; fingerprint {catalog.fingerprint}")
    return 0


async def _clerk_plans() -> list[Any]:
    env = {name: setting(name) or "" for name in ("CLERK_SECRET_KEY", "CLERK_API_URL")}
    try:
        settings = clerk_api_settings(env)
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    if settings is None:
        raise ConfigError("CLERK_SECRET_KEY is not set (the Backend API key, sk_test_…/sk_live_…)")
    try:
        async with ClerkApi(settings) as api:
            return list(await api.plans())
    except ClerkApiError as exc:
        raise CliError(f"Clerk's Backend API: {exc}", code="UNAVAILABLE") from None


def cmd_catalog_import(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.force:
        raise UsageError(f"{out} exists (--force to overwrite it)")
    try:
        imported = catalog_from_clerk_plans(asyncio.run(_clerk_plans()))
    except ValueError as exc:  # CatalogError included: Clerk's answer makes no catalog
        raise CliError(f"cannot write a catalog: {exc}", code="FAILED_PRECONDITION") from None
    if out is not None:
        try:
            out.write_text(imported.text, "utf-8")
        except OSError as exc:
            raise UsageError(f"{out}: cannot be written ({exc.strerror})") from None
    if args.json:  # one JSON document: the file written, else the TOML itself
        where = {"output": str(out)} if out is not None else {"toml": imported.text}
        dump_json({**where, "plans": imported.plans, "features": imported.features})
        return 0
    if out is None:
        sys.stdout.write(imported.text)
    print(
        f"{imported.plans} plans and {imported.features} features from Clerk; add your limits, "
        f"then: entitlements catalog validate {out or 'FILE'}",
        file=sys.stderr,
    )
    return 0
