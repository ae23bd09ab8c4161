"""A first catalog written from Clerk's plan list (`GET /v1/billing/plans`), for its author to
add limits to: each Clerk plan becomes a plan with its slug, its features' slugs and its payer
type (a comment: the service does not need it), ranked default plans first, then by fee.

Pure: Clerk's JSON in, TOML text out (checked by parsing it back before anyone writes it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.domain.catalog import parse_catalog_text

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
RANK_STEP = 10


@dataclass(frozen=True, slots=True)
class ImportedCatalog:
    text: str
    plans: int
    features: int


def _string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, with ASCII output)."""
    return json.dumps(value, ensure_ascii=True)


def _key(value: str) -> str:
    return value if _BARE_KEY.match(value) else _string(value)


def _comment(value: object) -> str:
    return _UNSAFE.sub(" ", str(value))[:120]


def _fee(plan: Mapping[str, Any]) -> int:
    fee = plan.get("fee")
    amount = fee.get("amount") if isinstance(fee, dict) else None
    return amount if isinstance(amount, int) and not isinstance(amount, bool) else 0


def _features(plan: Mapping[str, Any]) -> list[str]:
    raw = plan.get("features")
    if not isinstance(raw, list):
        return []
    slugs = [f.get("slug") for f in raw if isinstance(f, dict)]
    return list(dict.fromkeys(s for s in slugs if isinstance(s, str) and s))


def catalog_from_clerk_plans(clerk_plans: Sequence[Mapping[str, Any]]) -> ImportedCatalog:
    """The catalog TOML for Clerk's plans; ValueError when there is no plan with a slug."""
    plans = [p for p in clerk_plans if isinstance(p.get("slug"), str) and p.get("slug")]
    if not plans:
        raise ValueError("Clerk lists no plan with a slug")
    plans.sort(
        key=lambda p: (
            not p.get("is_default"),
            p.get("for_payer_type") != "user",
            _fee(p),
            str(p["slug"]),
        )
    )
    defaults = [p for p in plans if p.get("is_default")]
    default = next((p for p in defaults if p.get("for_payer_type") == "user"), None)
    default = default or (defaults[0] if defaults else plans[0])
    names: dict[int, str] = {}
    taken: set[str] = set()
    for i, p in enumerate(plans):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(p["slug"]))
        while name in taken:
            name += f"_{p.get('for_payer_type') or 'plan'}"
        taken.add(name)
        names[i] = name
    features = list(dict.fromkeys(f for p in plans for f in _features(p)))
    out = [
        "# Written by `entitlements catalog import` from Clerk's plan list. Declare your limits,",
        "# give every plan a value for each, then run `entitlements catalog validate FILE`.",
        "",
        f"default_plan = {_string(names[plans.index(default)])}",
        "features = [" + ", ".join(_string(f) for f in features) + "]",
        '# limits = ["maxProjects"]  (then in each plan: limits = { maxProjects = 3 })',
        "limits = []",
    ]
    seen_slugs: set[str] = set()
    for i, p in enumerate(plans):
        slug = str(p["slug"])
        fee = p.get("fee")
        shown = fee.get("amount_formatted") if isinstance(fee, dict) else None
        out += [
            "",
            f"# {_comment(p.get('name') or slug)} ({_comment(p.get('id') or 'no id')}): "
            f"payer type {_comment(p.get('for_payer_type') or 'unknown')}"
            + (", Clerk's default plan" if p.get("is_default") else "")
            + (f", fee {_comment(shown)}" if shown else ""),
            f"[plans.{_key(names[i])}]",
            f"rank = {i * RANK_STEP}",
        ]
        if slug in seen_slugs:  # Clerk lists the slug twice: map it once
            out.append("grant_only = true  # its slug is mapped by a plan above")
        else:
            out.append(f"clerk_slugs = [{_string(slug)}]")
        seen_slugs.add(slug)
        plan_features = _features(p)
        out.append("features = [" + ", ".join(_string(f) for f in plan_features) + "]")
    text = "\n".join(out) + "\n"
    parsed = parse_catalog_text(text, "imported catalog")
    return ImportedCatalog(text, len(parsed.plans), len(parsed.features))
