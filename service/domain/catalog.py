"""The plan catalog: app plans, their features and limits, and which Clerk plans map to them.

Parsed from TOML and validated once at start-up, so a bad catalog refuses to start instead of
answering wrongly later.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

UNLIMITED = "unlimited"
DEFAULT_PAST_DUE_GRACE_SECONDS = 3 * 24 * 3600


class CatalogError(ValueError):
    """The catalog is invalid; the message names the problem."""


class Reset(StrEnum):
    """When a metered limit's usage starts again from zero (`[meters.NAME] reset`)."""

    BILLING_PERIOD = "billing_period"
    MONTH = "month"
    DAY = "day"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class LimitValue:
    """A numeric limit, or unlimited."""

    value: int = 0
    unlimited: bool = False

    def allows(self, current_usage: int, requested: int) -> bool:
        return self.unlimited or current_usage + requested <= self.value


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    rank: int
    features: frozenset[str]
    limits: Mapping[str, LimitValue]
    clerk_slugs: tuple[str, ...] = ()
    clerk_plan_ids: tuple[str, ...] = ()
    lifetime: bool = False


@dataclass(frozen=True, slots=True)
class PlanMatch:
    """The app plan a Clerk plan maps to; `known` is False when it fell back to the default."""

    plan: Plan
    known: bool


@dataclass(frozen=True)
class Catalog:
    plans: Mapping[str, Plan]
    default_plan_name: str
    features: frozenset[str]
    limit_names: tuple[str, ...]
    past_due_grace_seconds: int = DEFAULT_PAST_DUE_GRACE_SECONDS
    # Metered limits (SPEC §10.1): the service keeps their usage, reset by this policy.
    meters: Mapping[str, Reset] = field(default_factory=dict)
    _by_key: Mapping[str, Plan] = field(default_factory=dict, repr=False)

    @property
    def default_plan(self) -> Plan:
        return self.plans[self.default_plan_name]

    def match(self, slug: str | None, plan_id: str | None) -> PlanMatch:
        """Map a Clerk plan (slug first, then `cplan_…` id) to an app plan."""
        for key in (slug, plan_id):
            if key and key in self._by_key:
                return PlanMatch(self._by_key[key], True)
        return PlanMatch(self.default_plan, False)

    def plans_by_rank(self) -> list[Plan]:
        return sorted(self.plans.values(), key=lambda p: p.rank)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of everything an answer depends on (not of the file's spelling): a client
        that sees it change drops the answers it holds (SPEC §10.5)."""
        canonical = {
            "default": self.default_plan_name,
            "features": sorted(self.features),
            "limits": list(self.limit_names),
            "grace": self.past_due_grace_seconds,
            "meters": {name: reset.value for name, reset in sorted(self.meters.items())},
            "plans": {
                plan.name: {
                    "rank": plan.rank,
                    "features": sorted(plan.features),
                    "limits": {
                        name: ("unlimited" if value.unlimited else value.value)
                        for name, value in sorted(plan.limits.items())
                    },
                    "slugs": list(plan.clerk_slugs),
                    "ids": list(plan.clerk_plan_ids),
                    "lifetime": plan.lifetime,
                }
                for plan in self.plans_by_rank()
            },
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]


def _limit(plan: str, name: str, raw: object) -> LimitValue:
    if raw == UNLIMITED:
        return LimitValue(unlimited=True)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return LimitValue(value=raw)
    raise CatalogError(
        f'plan {plan!r}: limit {name!r} must be a non-negative integer or "unlimited", got {raw!r}'
    )


def _str_list(where: str, raw: object) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise CatalogError(f"{where} must be a list of non-empty strings")
    return list(raw)


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    """Build and validate a catalog from parsed TOML."""
    features = _str_list("features", data.get("features", []))
    if len(set(features)) != len(features):
        raise CatalogError("features: a feature is declared twice")
    limit_names = _str_list("limits", data.get("limits", []))
    if len(set(limit_names)) != len(limit_names):
        raise CatalogError("limits: a limit is declared twice")
    grace = data.get("past_due_grace_seconds", DEFAULT_PAST_DUE_GRACE_SECONDS)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        raise CatalogError("past_due_grace_seconds must be a non-negative integer")
    raw_plans = data.get("plans")
    if not isinstance(raw_plans, dict) or not raw_plans:
        raise CatalogError("catalog declares no [plans.<name>] table")

    plans: dict[str, Plan] = {}
    by_key: dict[str, Plan] = {}
    ranks: dict[int, str] = {}
    for name, raw in raw_plans.items():
        if not isinstance(raw, dict):
            raise CatalogError(f"plans.{name} must be a table")
        rank = raw.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise CatalogError(f"plan {name!r}: rank must be an integer")
        if rank in ranks:
            raise CatalogError(f"plan {name!r}: rank {rank} is also plan {ranks[rank]!r}'s")
        ranks[rank] = name
        plan_features = _str_list(f"plan {name!r}: features", raw.get("features", []))
        for feature in plan_features:
            if feature not in features:
                raise CatalogError(
                    f"plan {name!r}: feature {feature!r} is not declared in `features`"
                )
        raw_limits = raw.get("limits", {})
        if not isinstance(raw_limits, dict):
            raise CatalogError(f"plan {name!r}: limits must be a table")
        for limit_name in raw_limits:
            if limit_name not in limit_names:
                raise CatalogError(
                    f"plan {name!r}: limit {limit_name!r} is not declared in `limits`"
                )
        missing = [n for n in limit_names if n not in raw_limits]
        if missing:
            raise CatalogError(f"plan {name!r}: no value for limit(s) {', '.join(missing)}")
        lifetime = raw.get("lifetime", False)
        if not isinstance(lifetime, bool):
            raise CatalogError(f"plan {name!r}: lifetime must be true or false")
        plan = Plan(
            name=name,
            rank=rank,
            features=frozenset(plan_features),
            limits={n: _limit(name, n, raw_limits[n]) for n in limit_names},
            clerk_slugs=tuple(_str_list(f"plan {name!r}: clerk_slugs", raw.get("clerk_slugs", []))),
            clerk_plan_ids=tuple(
                _str_list(f"plan {name!r}: clerk_plan_ids", raw.get("clerk_plan_ids", []))
            ),
            lifetime=lifetime,
        )
        for key in (*plan.clerk_slugs, *plan.clerk_plan_ids):
            if key in by_key:
                raise CatalogError(
                    f"Clerk slug/plan id {key!r} is mapped twice "
                    f"(plans {by_key[key].name!r} and {name!r})"
                )
            by_key[key] = plan
        plans[name] = plan

    meters = _meters(data.get("meters", {}), limit_names)
    default_name = data.get("default_plan")
    if not isinstance(default_name, str) or default_name not in plans:
        raise CatalogError(f"default_plan {default_name!r} is not a declared plan")
    return Catalog(
        plans=plans,
        default_plan_name=default_name,
        features=frozenset(features),
        limit_names=tuple(limit_names),
        past_due_grace_seconds=grace,
        meters=meters,
        _by_key=by_key,
    )


def _meters(raw: object, limit_names: list[str]) -> dict[str, Reset]:
    """`[meters.NAME] reset = "billing_period" | "month" | "day" | "never"`, NAME a limit."""
    if not isinstance(raw, dict):
        raise CatalogError("meters must be a table of [meters.<limit>] tables")
    meters: dict[str, Reset] = {}
    choices = " | ".join(f'"{r.value}"' for r in Reset)
    for name, table in raw.items():
        if name not in limit_names:
            raise CatalogError(f"meters.{name}: {name!r} is not declared in `limits`")
        if not isinstance(table, dict):
            raise CatalogError(f"meters.{name} must be a table")
        unknown = sorted(set(table) - {"reset"})
        if unknown:
            raise CatalogError(f"meters.{name}: unknown key {unknown[0]!r} (expected: reset)")
        try:
            meters[name] = Reset(str(table.get("reset")))
        except ValueError:
            raise CatalogError(
                f"meters.{name}: reset must be one of {choices}, got {table.get('reset')!r}"
            ) from None
    return meters


def parse_catalog_text(text: str, source: str = "catalog") -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: not valid TOML ({exc})") from None
    try:
        return parse_catalog(data)
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ClerkPlanRef:
    id: str
    slug: str
    name: str


@dataclass(frozen=True, slots=True)
class CatalogCheck:
    """How Clerk's plan list and the catalog's mapping disagree."""

    unmapped: tuple[ClerkPlanRef, ...]
    unknown_slugs: tuple[str, ...]
    clerk_plans: int

    @property
    def ok(self) -> bool:
        return not self.unmapped and not self.unknown_slugs


def check_catalog(catalog: Catalog, clerk_plans: list[Mapping[str, Any]]) -> CatalogCheck:
    """Clerk plans the catalog does not map (by slug or id), and catalog slugs Clerk lacks."""
    refs = [
        ClerkPlanRef(str(p.get("id") or ""), str(p.get("slug") or ""), str(p.get("name") or ""))
        for p in clerk_plans
    ]
    unmapped = tuple(r for r in refs if not catalog.match(r.slug or None, r.id or None).known)
    at_clerk = {r.slug for r in refs}
    mapped = sorted({slug for plan in catalog.plans.values() for slug in plan.clerk_slugs})
    unknown = tuple(slug for slug in mapped if slug not in at_clerk)
    return CatalogCheck(unmapped, unknown, len(refs))
