"""The plan catalog: app plans, their features and limits, and which Clerk plans map to them.

Parsed from TOML and validated once at start-up (and offline by `entitlements catalog
validate`), so a bad catalog refuses to start instead of answering wrongly later. The schema is
strict: an unknown key is an error naming its line and the nearest allowed key, and a plan that
no Clerk plan could ever reach is an error (catalog_schema.py).
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

from service.domain.catalog_schema import KeyLines, Path, suggest, unknown_keys

UNLIMITED = "unlimited"
DEFAULT_PAST_DUE_GRACE_SECONDS = 3 * 24 * 3600


class CatalogError(ValueError):
    """The catalog is invalid; the message names the problem (and, once placed in a file, its
    line). `path` is the key the problem is about; `problems` every problem found."""

    def __init__(self, message: str, path: Path = (), problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.problems = problems or (message,)


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
    # Reached only by `entitlements grant` (no Clerk plan maps to it), said so explicitly.
    grant_only: bool = False


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
    # What is allowed but probably a mistake (not part of the fingerprint: answers ignore it).
    warnings: tuple[str, ...] = ()
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
        f'plan {plan!r}: limit {name!r} must be a non-negative integer or "unlimited", got {raw!r}',
        ("plans", plan, "limits", name),
    )


def _str_list(where: str, raw: object, path: Path) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise CatalogError(f"{where} must be a list of non-empty strings", path)
    return list(raw)


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    """Build and validate a catalog from parsed TOML."""
    unknown = unknown_keys(data)
    if unknown:
        raise CatalogError(unknown[0][1], unknown[0][0], tuple(m for _, m in unknown))
    features = _str_list("features", data.get("features", []), ("features",))
    if len(set(features)) != len(features):
        raise CatalogError("features: a feature is declared twice", ("features",))
    limit_names = _str_list("limits", data.get("limits", []), ("limits",))
    if len(set(limit_names)) != len(limit_names):
        raise CatalogError("limits: a limit is declared twice", ("limits",))
    grace = data.get("past_due_grace_seconds", DEFAULT_PAST_DUE_GRACE_SECONDS)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        raise CatalogError(
            "past_due_grace_seconds must be a non-negative integer", ("past_due_grace_seconds",)
        )
    raw_plans = data.get("plans")
    if not isinstance(raw_plans, dict) or not raw_plans:
        raise CatalogError("catalog declares no [plans.<name>] table")
    default_name = data.get("default_plan")
    if not isinstance(default_name, str) or default_name not in raw_plans:
        raise CatalogError(
            f"default_plan {default_name!r} is not a declared plan"
            + suggest(str(default_name), list(raw_plans)),
            ("default_plan",),
        )

    plans: dict[str, Plan] = {}
    by_key: dict[str, Plan] = {}
    ranks: dict[int, str] = {}
    for name, raw in raw_plans.items():
        plan = _plan(name, raw, features, limit_names, is_default=name == default_name)
        if plan.rank in ranks:
            raise CatalogError(
                f"plan {name!r}: rank {plan.rank} is also plan {ranks[plan.rank]!r}'s",
                ("plans", name, "rank"),
            )
        ranks[plan.rank] = name
        for key in (*plan.clerk_slugs, *plan.clerk_plan_ids):
            if key in by_key:
                raise CatalogError(
                    f"Clerk slug/plan id {key!r} is mapped twice "
                    f"(plans {by_key[key].name!r} and {name!r})",
                    ("plans", name, "clerk_slugs" if key in plan.clerk_slugs else "clerk_plan_ids"),
                )
            by_key[key] = plan
        plans[name] = plan

    meters = _meters(data.get("meters", {}), limit_names)
    return Catalog(
        plans=plans,
        default_plan_name=default_name,
        features=frozenset(features),
        limit_names=tuple(limit_names),
        past_due_grace_seconds=grace,
        meters=meters,
        warnings=_warnings(plans, default_name, features),
        _by_key=by_key,
    )


def _plan(
    name: str, raw: object, features: list[str], limit_names: list[str], *, is_default: bool
) -> Plan:
    """One `[plans.NAME]` table, checked: declared features and limits, a value for every
    limit, and (unless it is the default plan or `grant_only`) a Clerk plan that reaches it."""
    where: Path = ("plans", name)
    if not isinstance(raw, dict):
        raise CatalogError(f"plans.{name} must be a table", where)
    rank = raw.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise CatalogError(f"plan {name!r}: rank must be an integer", (*where, "rank"))
    plan_features = _str_list(
        f"plan {name!r}: features", raw.get("features", []), (*where, "features")
    )
    for feature in plan_features:
        if feature not in features:
            raise CatalogError(
                f"plan {name!r}: feature {feature!r} is not declared in `features`"
                + suggest(feature, features),
                (*where, "features"),
            )
    raw_limits = raw.get("limits", {})
    if not isinstance(raw_limits, dict):
        raise CatalogError(f"plan {name!r}: limits must be a table", (*where, "limits"))
    for limit_name in raw_limits:
        if limit_name not in limit_names:
            raise CatalogError(
                f"plan {name!r}: limit {limit_name!r} is not declared in `limits`"
                + suggest(limit_name, limit_names),
                (*where, "limits", limit_name),
            )
    missing = [n for n in limit_names if n not in raw_limits]
    if missing:
        raise CatalogError(
            f"plan {name!r}: no value for limit(s) {', '.join(missing)}", (*where, "limits")
        )
    flags = {}
    for flag in ("lifetime", "grant_only"):
        flags[flag] = raw.get(flag, False)
        if not isinstance(flags[flag], bool):
            raise CatalogError(f"plan {name!r}: {flag} must be true or false", (*where, flag))
    slugs = _str_list(f"plan {name!r}: clerk_slugs", raw.get("clerk_slugs", []), where)
    ids = _str_list(f"plan {name!r}: clerk_plan_ids", raw.get("clerk_plan_ids", []), where)
    if not slugs and not ids and not is_default and not flags["grant_only"]:
        raise CatalogError(
            f"plan {name!r} can never be reached: no `clerk_slugs` or `clerk_plan_ids` map a "
            "Clerk plan to it (a plan given only by `entitlements grant` says `grant_only = true`)",
            where,
        )
    return Plan(
        name=name,
        rank=rank,
        features=frozenset(plan_features),
        limits={n: _limit(name, n, raw_limits[n]) for n in limit_names},
        clerk_slugs=tuple(slugs),
        clerk_plan_ids=tuple(ids),
        lifetime=flags["lifetime"],
        grant_only=flags["grant_only"],
    )


def _warnings(plans: Mapping[str, Plan], default_name: str, features: list[str]) -> tuple[str, ...]:
    """Allowed, but probably not meant: a paid plan with no feature, a feature no plan has."""
    found = [
        f"plan {plan.name!r} has no features (it differs from others only by its limits)"
        for plan in plans.values()
        if not plan.features and plan.name != default_name
    ]
    granted = {f for plan in plans.values() for f in plan.features}
    found += [
        f"feature {f!r} is declared but no plan has it (only an override can grant it)"
        for f in features
        if f not in granted
    ]
    return tuple(found)


def _meters(raw: object, limit_names: list[str]) -> dict[str, Reset]:
    """`[meters.NAME] reset = "billing_period" | "month" | "day" | "never"`, NAME a limit."""
    if not isinstance(raw, dict):
        raise CatalogError("meters must be a table of [meters.<limit>] tables", ("meters",))
    meters: dict[str, Reset] = {}
    choices = " | ".join(f'"{r.value}"' for r in Reset)
    for name, table in raw.items():
        where = ("meters", name)
        if name not in limit_names:
            raise CatalogError(
                f"meters.{name}: {name!r} is not declared in `limits`" + suggest(name, limit_names),
                where,
            )
        if not isinstance(table, dict):
            raise CatalogError(f"meters.{name} must be a table", where)
        try:
            meters[name] = Reset(str(table.get("reset")))
        except ValueError:
            raise CatalogError(
                f"meters.{name}: reset must be one of {choices}, got {table.get('reset')!r}",
                (*where, "reset"),
            ) from None
    return meters


def parse_catalog_text(text: str, source: str = "catalog") -> Catalog:
    """Parse and check a catalog file; every error reads `SOURCE:LINE: problem`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: not valid TOML ({exc})") from None
    try:
        return parse_catalog(data)
    except CatalogError as exc:
        lines = KeyLines(text)
        unknown = {m: p for p, m in unknown_keys(data)}
        placed = tuple(
            _placed(source, lines.line(unknown.get(problem, exc.path)), problem)
            for problem in exc.problems
        )
        raise CatalogError("\n".join(placed), exc.path, placed) from None


def _placed(source: str, line: int | None, problem: str) -> str:
    return f"{source}:{line}: {problem}" if line is not None else f"{source}: {problem}"


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
